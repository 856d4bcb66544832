"""Load benchmark: one server process, N concurrent clients (threads, real HTTP), 3 rounds.

Prints a table and writes benchmarks/load.md::

    .venv/bin/python benchmarks/load.py            # N = 50, 100, 200
    .venv/bin/python benchmarks/load.py --clients 200 400
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

from perf_common import processes, start_server

from fl_kubeflow.auth import TOKEN_ENV, new_token
from fl_kubeflow.client.numpy_trainers import DeltaTrainer
from fl_kubeflow.client.swarm import run_swarm

HERE = Path(__file__).resolve().parent
SHAPES = [(64, 32), (32,), (32, 10), (10,)]
ROUNDS = 3


def one_run(num_clients: int, folder: Path) -> dict:
    token = new_token()
    with processes(folder) as procs:
        url = start_server(
            procs,
            folder,
            num_clients,
            ROUNDS,
            "--join-timeout",
            "300",
            "--round-timeout",
            "300",
            "--grace-period",
            "30",
            env={TOKEN_ENV: token},
        )
        started = time.perf_counter()
        result = run_swarm(
            url, num_clients, lambda i: DeltaTrainer(SHAPES, delta=0.01), token=token, timeout=600
        )
        wall = time.perf_counter() - started
        procs.wait_all(120)
    history = json.loads((folder / "out" / "history.json").read_text())
    durations = [r["duration_s"] for r in history["rounds"][1:]]
    return {
        "clients": num_clients,
        "errors": len(result.errors),
        "median_round_s": statistics.median(durations),
        "max_round_s": max(durations),
        "wall_s": wall,
        "peak_rss_mb": history["server_peak_rss_bytes"] / 2**20,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--output", type=Path, default=HERE / "load.md")
    args = parser.parse_args()
    params = sum(a * (b if b else 1) for a, b in [(64, 32), (32, 0), (32, 10), (10, 0)])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.clients:
            folder = Path(tmp) / f"n{n}"
            folder.mkdir()
            rows.append(one_run(n, folder))
            print(rows[-1], flush=True)
    header = (
        "| clients | errors | median round s | max round s | wall s (3 rounds) "
        "| server peak RSS MB |"
    )
    lines = [
        "# Load: many concurrent clients against one server",
        "",
        f"Made by `.venv/bin/python benchmarks/load.py` on {date.today()} "
        f"({platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}).",
        f"One server process; N clients as threads of one process (own HTTP sessions), "
        f"numpy delta trainers, {params} float32 parameters, {ROUNDS} rounds, FedAvg, token auth. "
        "Round time is the server's, from opening a round to aggregating it.",
        "",
        header,
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['errors']} | {r['median_round_s']:.3f} | "
            f"{r['max_round_s']:.3f} | {r['wall_s']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[6:]))
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
