"""Round overhead: one real server process and N numpy client processes on loopback.

Clients do no training: each returns the global weights plus a small delta
(``DeltaTrainer``), so a round's time is the protocol's: the model out to N
clients, N updates back, the weighted sum, the next model encoded. Round time is
the server's (history.json ``duration_s``: from opening a round to having the
next global model ready to serve).

    .venv/bin/python benchmarks/round_overhead.py --params 1000000 --clients 8

``client`` is this module's own client process (``FederatedClient`` + ``DeltaTrainer``),
which also reports its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from perf_common import (
    HERE,
    PYTHON,
    client_summaries,
    model_shapes,
    peak_rss_bytes,
    processes,
    shapes_arg,
    start_clients,
    start_server,
)

ROUNDS = 5
DELTA = 0.001


def run_one(
    num_params: int,
    num_clients: int,
    folder: Path,
    rounds: int = ROUNDS,
    wire_dtype: str | None = None,
    timeout: float = 600.0,
    profile: Path | None = None,
    server_options: Sequence[str] = (),
    on_server: Callable[[str], object] | None = None,
    prefix: Sequence[str] = (),
) -> dict[str, Any]:
    """Run one federation to its end and return its measurements.

    ``profile``: record the server under py-spy (collapsed stacks) into this file;
    ``server_options``: more ``fl-kubeflow server`` options; ``on_server``: called with
    the server's URL once it listens, before the clients start (secure_aggregation.py's);
    ``prefix``: run the server under this command (request_costs.py's /usr/bin/time).
    """
    from fl_kubeflow import files, wire
    from fl_kubeflow.client.numpy_trainers import random_weights

    shapes = model_shapes(num_params)
    folder.mkdir(parents=True, exist_ok=True)
    initial = folder / "initial.safetensors"
    files.write_bytes(initial, wire.encode(random_weights(shapes, seed=0)))
    extra = ["--wire-dtype", wire_dtype] if wire_dtype else []
    started = time.perf_counter()
    with processes(folder) as procs:
        # py-spy beside this Python (a venv's bin), else on PATH.
        py_spy = shutil.which("py-spy", path=str(Path(PYTHON).parent)) or "py-spy"
        spy = [py_spy, "record", "-r", "250", "--threads", "-f", "raw", "-o", str(profile), "--"]
        url = start_server(
            procs,
            folder,
            num_clients,
            rounds,
            "--initial-weights",
            str(initial),
            "--join-timeout",
            str(timeout / 2),
            "--round-timeout",
            str(timeout / 2),
            "--grace-period",
            "30",
            *extra,
            *server_options,
            prefix=spy if profile else prefix,
        )
        if on_server is not None:
            on_server(url)
        start_clients(
            procs,
            folder,
            HERE / "round_overhead.py",
            url,
            num_clients,
            timeout,
            "--shapes",
            shapes_arg(shapes),
            *extra,
        )
        procs.wait_all(timeout)
    wall = time.perf_counter() - started
    history = json.loads((folder / "out" / "history.json").read_text())
    if history["status"] != "finished":
        raise RuntimeError(f"run {num_params}x{num_clients}: {history['error']}")
    records = [r for r in history["rounds"] if r["round"] >= 1]
    clients = client_summaries(folder, num_clients)
    model_bytes = 4 * num_params
    return {
        "params": num_params,
        "clients": num_clients,
        "rounds": len(records),
        "wire_dtype": wire_dtype or "float32",
        "round_s": [r["duration_s"] for r in records],
        "median_round_s": statistics.median(r["duration_s"] for r in records),
        "bytes_in_per_client": statistics.median(r["bytes_in"] for r in records) / num_clients,
        "bytes_out_per_client": statistics.median(r["bytes_out"] for r in records) / num_clients,
        "model_bytes": model_bytes,
        "server_peak_rss": history["server_peak_rss_bytes"],
        "client_peak_rss_max": max(c["peak_rss_bytes"] for c in clients),
        "client_peak_rss_median": statistics.median(c["peak_rss_bytes"] for c in clients),
        "wall_s": wall,
    }


def client_main(argv: list[str]) -> int:
    """One benchmark client: join, return global + delta each round, report peak RSS."""
    from fl_kubeflow.cli.options import shapes
    from fl_kubeflow.client.federated_client import FederatedClient
    from fl_kubeflow.client.numpy_trainers import DeltaTrainer

    parser = argparse.ArgumentParser(prog="round_overhead.py client")
    parser.add_argument("--server", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--shapes", type=shapes, required=True)
    parser.add_argument("--summary", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--wire-dtype", default=None)
    args = parser.parse_args(argv)
    options: dict[str, Any] = {}
    if args.wire_dtype:
        options["wire_dtype"] = args.wire_dtype
    client = FederatedClient(
        args.server,
        args.client_id,
        DeltaTrainer(args.shapes, delta=DELTA, evaluate_rounds=False),
        retry_timeout=60.0,
        round_wait_timeout=args.timeout,
        request_timeout=args.timeout,
        **options,
    )
    summary = client.run()
    args.summary.write_text(
        json.dumps({"rounds": summary.rounds_trained, "peak_rss_bytes": peak_rss_bytes()})
    )
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        return client_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--clients", type=int, nargs="+", default=[8])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--wire-dtype", default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep run folders here")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the server into this")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        for p in args.params:
            for n in args.clients:
                row = run_one(
                    p, n, base / f"p{p}-n{n}", args.rounds, args.wire_dtype, profile=args.profile
                )
                row.pop("round_s")
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
