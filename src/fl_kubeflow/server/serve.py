"""Run a Federation behind its HTTP server until the run ends, then write its outputs."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fl_kubeflow import files, strategies, wire
from fl_kubeflow.server import checkpoint
from fl_kubeflow.server.app import create_app
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.fedbuff import AsyncFederation
from fl_kubeflow.server.federation import Federation
from fl_kubeflow.server.header_check import check_request_head
from fl_kubeflow.server.http_server import start_http_server
from fl_kubeflow.server.identity import identities_for
from fl_kubeflow.server.memory import peak_rss_bytes, release_large_allocations
from fl_kubeflow.strategies import Strategy

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


def serve(
    config: ServerConfig,
    on_listening: Callable[[int], None] | None = None,
    strategy: Strategy | None = None,
) -> ServeResult:
    """Serve one run to its end. ``on_listening`` receives the bound port.

    ``strategy`` is the one ``strategies.build`` made from ``config`` (entry points build
    it first, to refuse bad options before anything starts); None builds it here.
    """
    # Before any model is loaded: the server's memory must not grow with the traffic.
    release_large_allocations()
    if strategy is None:
        strategy = strategies.build(
            config.strategy,
            config.strategy_options,
            num_clients=config.num_clients,
            min_clients=config.min_clients,
            secure_aggregation=config.secure_aggregation,
            asynchronous=config.asynchronous,
        )
    resume = checkpoint.load(config.checkpoint_dir) if config.checkpoint_dir else None
    initial = None
    if resume is None and config.initial_weights:
        initial = load_initial_weights(config.initial_weights)
    run_class = AsyncFederation if config.asynchronous is not None else Federation
    federation = run_class(config, strategy, initial, resume=resume)
    # A client revoked in the registry file during the run is dropped from it.
    identities = identities_for(config, on_revoke=federation.revoke)
    identities.watch(config.credentials_reload)
    head_check = functools.partial(check_request_head, federation, identities)
    try:
        server = start_http_server(
            create_app(federation, config, identities),
            config,
            head_check,
            federation.count_rejection,
            on_failure=federation.abort,
            federation=federation,
        )
    except BaseException:
        identities.close()
        raise
    log.info(
        "serving %d clients x %d rounds (strategy %s, min_clients %d) on %s://%s:%d",
        config.num_clients,
        config.num_rounds,
        strategy.name,
        config.quorum,
        server.scheme,
        config.host,
        server.port,
    )
    if on_listening is not None:
        on_listening(server.port)
    try:
        federation.run()
    finally:
        identities.close()
        result = _write_outputs(federation, config.output_dir)
        server.close()
    return result


def _write_outputs(federation: Federation, output_dir: Path | None) -> ServeResult:
    history = federation.history()
    # Peak memory of this process: benchmarks read it to check that FedAvg's footprint
    # does not grow with the number of clients.
    history["server_peak_rss_bytes"] = peak_rss_bytes()
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
