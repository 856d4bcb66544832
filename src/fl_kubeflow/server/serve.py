"""Run a Federation behind waitress until the run ends, then write its outputs."""

from __future__ import annotations

import logging
import resource
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from waitress import create_server

from fl_kubeflow import files, strategies, wire
from fl_kubeflow.server import checkpoint
from fl_kubeflow.server.app import create_app
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.federation import Federation

log = logging.getLogger("fl_kubeflow.server")

WEIGHTS_FILE = "weights.safetensors"
HISTORY_FILE = "history.json"


@dataclass
class ServeResult:
    """How the run ended and where its outputs are."""

    ok: bool
    error: str | None
    history: dict
    weights_path: Path | None
    history_path: Path | None


def load_initial_weights(path: Path) -> wire.Weights:
    """Read an initial-weights safetensors file; a bad file is a clear error."""
    try:
        return wire.decode(Path(path).read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read initial weights {str(path)!r}: {exc.strerror}") from None
    except wire.WireFormatError as exc:
        raise ValueError(f"initial weights {str(path)!r}: {exc}") from None


def serve(config: ServerConfig, on_listening: Callable[[int], None] | None = None) -> ServeResult:
    """Serve one run to its end. ``on_listening`` receives the bound port."""
    strategy = strategies.create(config.strategy, **config.strategy_options)
    resume = checkpoint.load(config.checkpoint_dir) if config.checkpoint_dir else None
    initial = None
    if resume is None and config.initial_weights:
        initial = load_initial_weights(config.initial_weights)
    federation = Federation(config, strategy, initial, resume=resume)
    server = create_server(
        create_app(federation, config),
        host=config.host,
        port=config.port,
        threads=config.server_threads,
        # Each client keeps a connection (often a long-poll) open: waitress's default
        # limit of 100 connections would stall a federation of 200.
        connection_limit=config.connection_limit,
        # Well above the app's own limit, so the app answers oversize bodies with a JSON
        # reason; only absurd bodies meet waitress's plain-text 413. Waitress spools
        # large bodies to disk, so this does not cost memory.
        max_request_body_size=2 * config.max_update_bytes + 16 * 1024 * 1024,
        channel_timeout=max(120, int(config.poll_timeout) + 30),
        # Our headers are small; a 64 KiB cap refuses header floods early.
        max_request_header_size=64 * 1024,
        ident="fl-kubeflow",
    )
    port = int(server.effective_port)  # type: ignore[union-attr]
    log.info(
        "serving %d clients x %d rounds (strategy %s, min_clients %d) on http://%s:%d",
        config.num_clients,
        config.num_rounds,
        strategy.name,
        config.quorum,
        config.host,
        port,
    )
    thread = threading.Thread(target=server.run, name="waitress", daemon=True)
    thread.start()
    if on_listening is not None:
        on_listening(port)
    try:
        federation.run()
    finally:
        result = _write_outputs(federation, config.output_dir)
        server.close()
    return result


def _write_outputs(federation: Federation, output_dir: Path | None) -> ServeResult:
    history = federation.history()
    # Peak memory of this process: benchmarks read it to check that FedAvg's footprint
    # does not grow with the number of clients.
    history["server_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    weights_path = history_path = None
    ok = history["status"] == "finished"
    if output_dir is not None:
        output_dir = Path(output_dir)
        weights = federation.final_weights()
        if ok and weights is not None:
            weights_path = output_dir / WEIGHTS_FILE
            files.write_bytes(weights_path, wire.encode(weights))
        history_path = output_dir / HISTORY_FILE
        files.write_json(history_path, history)
        log.info("wrote %s", ", ".join(str(p) for p in (weights_path, history_path) if p))
    return ServeResult(ok, federation.error, history, weights_path, history_path)
