"""Accuracy effect of half-precision transfer on digits, written into benchmarks/convergence.md.

Runs the same federation (3 Keras clients, 10 rounds, mlp, FedAvg, the default
training options) with ``--wire-dtype`` float32, float16 and bfloat16 on the
server (clients follow it), and tabulates the federated evaluation accuracy of
the global model per round. Only the section "Half-precision transfer" of
convergence.md is replaced; what other scripts wrote around it stays.

    .venv/bin/python benchmarks/half_precision.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import date
from pathlib import Path

from perf_common import HERE, PYTHON, processes, start_server

WIRE_DTYPES = ("float32", "float16", "bfloat16")
PARTITIONS = ("iid", "dirichlet:0.5")
SECTION = "## Half-precision transfer"


def federated(
    partition: str, wire_dtype: str, clients: int, rounds: int, folder: Path
) -> tuple[list[float], list[int]]:
    """Accuracy per round (round 0 first) and bytes sent per round, for one run."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_NUM_INTRAOP_THREADS": "1", "OMP_NUM_THREADS": "1"}
    with processes(folder) as procs:
        url = start_server(
            procs, folder, clients, rounds, "--wire-dtype", wire_dtype, "--grace-period", "30"
        )
        for i in range(clients):
            procs.start(
                f"client-{i}",
                [
                    PYTHON,
                    "-m",
                    "fl_kubeflow",
                    "client",
                    "--server",
                    url,
                    "--client-id",
                    str(i),
                    "--num-clients",
                    str(clients),
                    "--trainer",
                    "keras",
                    "--dataset",
                    "digits",
                    "--partition",
                    partition,
                    "--model",
                    "mlp",
                ],
                env=env,
            )
        procs.wait_all(1800)
    history = json.loads((folder / "out" / "history.json").read_text())
    accuracy = [r["evaluate"]["metrics"]["accuracy"] for r in history["rounds"]]
    sent = [r["bytes_out"] for r in history["rounds"] if r["round"] >= 1]
    return accuracy, sent


def section(
    results: dict[str, dict[str, tuple[list[float], list[int]]]], clients: int, rounds: int
) -> list[str]:
    lines = [
        SECTION,
        "",
        f"Made by `.venv/bin/python benchmarks/half_precision.py` on {date.today()}. "
        f"`fl-kubeflow server --wire-dtype D` with {clients} `fl-kubeflow client --trainer keras "
        f"--model mlp --dataset digits` processes, {rounds} rounds, FedAvg, default training "
        "options; the clients send as the server does. The model and the aggregation stay "
        "float32: only the transfer is rounded (float16: 11 significant bits, range "
        "±65504; bfloat16: 8 significant bits, float32's range, rounded to nearest even). "
        "Accuracy is the federated evaluation of the global model on the clients' test splits.",
        "",
    ]
    for partition, by_dtype in results.items():
        lines += [
            f"### {partition}",
            "",
            "| round | " + " | ".join(by_dtype) + " |",
            "| ---: |" + " ---: |" * len(by_dtype),
        ]
        for r in range(rounds + 1):
            cells = [f"{by_dtype[d][0][r]:.4f}" for d in by_dtype]
            lines.append(f"| {r} | " + " | ".join(cells) + " |")
        sent = " | ".join(
            f"{sum(by_dtype[d][1]) / len(by_dtype[d][1]) / 1e3:.1f}" for d in by_dtype
        )
        lines += [f"| model kB sent per round (to {clients} clients) | {sent} |", ""]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--output", type=Path, default=HERE / "convergence.md")
    args = parser.parse_args()
    results: dict[str, dict[str, tuple[list[float], list[int]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for partition in PARTITIONS:
            results[partition] = {}
            for dtype in WIRE_DTYPES:
                folder = Path(tmp) / f"{partition.replace(':', '-')}-{dtype}"
                results[partition][dtype] = federated(
                    partition, dtype, args.clients, args.rounds, folder
                )
                print(f"{partition} {dtype}: {results[partition][dtype][0][-1]:.4f}", flush=True)
    text = args.output.read_text() if args.output.exists() else ""
    # Only this section is replaced: what other scripts wrote before or after it stays.
    before, _, rest = text.partition(SECTION)
    after = rest[rest.find("\n## ") + 1 :] if "\n## " in rest else ""
    new = "\n".join(section(results, args.clients, args.rounds))
    parts = [before.rstrip("\n"), new.rstrip("\n"), after.rstrip("\n")]
    args.output.write_text("\n\n".join(p for p in parts if p) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
