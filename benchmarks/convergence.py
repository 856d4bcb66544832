"""Federated vs centralized accuracy on digits, written to benchmarks/convergence.md.

For each partition, runs ``fl-kubeflow local`` (3 clients, 10 rounds, mlp, the
default training options) and the centralized baseline (same model, same total
epochs, all the clients' training data in one place, tested on the union of the
clients' local test splits), then tabulates test accuracy per round::

    .venv/bin/python benchmarks/convergence.py
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTITIONS = ("iid", "dirichlet:0.5")


def federated(partition: str, clients: int, rounds: int, folder: Path) -> list[float]:
    out = folder / partition.replace(":", "-")
    command = [
        sys.executable,
        "-m",
        "fl_kubeflow",
        "local",
        "--clients",
        str(clients),
        "--rounds",
        str(rounds),
        "--model",
        "mlp",
        "--partition",
        partition,
        "--output",
        str(out),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=1800)
    history = json.loads((out / "history.json").read_text())
    return [r["evaluate"]["metrics"]["accuracy"] for r in history["rounds"]]


def centralized(partition: str, clients: int, rounds: int) -> list[float]:
    command = [
        sys.executable,
        str(HERE / "centralized_baseline.py"),
        "--clients",
        str(clients),
        "--rounds",
        str(rounds),
        "--partition",
        partition,
    ]
    done = subprocess.run(command, check=True, capture_output=True, text=True, timeout=1800)
    rows = re.findall(
        r"^\s*(\d+)\s+\d+\s+\S+\s+\S+\s+\S+\s+([0-9.]+)\s+[0-9.]+$", done.stdout, re.M
    )
    return [float(acc) for _, acc in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--output", type=Path, default=HERE / "convergence.md")
    args = parser.parse_args()
    from fl_kubeflow import defaults

    lines = [
        "# Convergence on digits: federated vs centralized",
        "",
        f"Made by `.venv/bin/python benchmarks/convergence.py` on {date.today()} "
        f"({platform.machine()}, {platform.python_version()}).",
        "",
        f"Federated: `fl-kubeflow local --clients {args.clients} --rounds {args.rounds} "
        "--model mlp --partition P` (FedAvg; local epochs "
        f"{defaults.LOCAL_EPOCHS}, batch {defaults.BATCH_SIZE}, {defaults.OPTIMIZER} "
        f"lr {defaults.LEARNING_RATE}, seed {defaults.SEED}); accuracy is the example-weighted "
        "federated evaluation of the global model on the clients' local test splits.",
        "Centralized: `benchmarks/centralized_baseline.py --clients 3 --rounds 10 "
        "--partition P`: the same model and options, all training data in one place, "
        f"{defaults.LOCAL_EPOCHS} epochs per row, tested on the union of the same test splits.",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for partition in PARTITIONS:
            fed = federated(partition, args.clients, args.rounds, Path(tmp))
            cen = centralized(partition, args.clients, args.rounds)
            lines += [
                f"## {partition}",
                "",
                "| round | federated | centralized |",
                "| ---: | ---: | ---: |",
            ]
            for i, (f, c) in enumerate(zip(fed, cen, strict=True)):
                lines.append(f"| {i} | {f:.4f} | {c:.4f} |")
            lines.append("")
            print(f"{partition}: federated {fed[-1]:.4f}, centralized {cen[-1]:.4f}", flush=True)
    lines += [
        "## Other strategies, robustness, privacy",
        "",
        "Rounds to 90% accuracy for every strategy (iid and dirichlet:0.3) and FedAvg under",
        "central DP: [strategies.md](strategies.md) (`benchmarks/strategies_convergence.py`).",
        "Robust rules against 1 of 5 clients sending garbage: [robustness.md](robustness.md)",
        "(`benchmarks/robustness.py`). Their tables, as those scripts last wrote them:",
        "",
        *embedded("robustness.md"),
        *embedded("strategies.md"),
    ]
    args.output.write_text("\n".join(lines) + kept_sections(args.output))
    print(f"wrote {args.output}")


def embedded(name: str) -> list[str]:
    """Another benchmark's markdown, its headings moved two levels down."""
    path = HERE / name
    if not path.exists():
        return []
    return [
        f"##{line}" if line.startswith("#") else line for line in path.read_text().splitlines()
    ] + [""]


def kept_sections(path: Path) -> str:
    """Sections other scripts write into the file (e.g. half precision), kept as they are."""
    if not path.exists():
        return ""
    text = path.read_text()
    owned = {*(f"## {p}" for p in PARTITIONS), "## Other strategies, robustness, privacy"}
    starts = [i for i, line in enumerate(text.splitlines()) if line.startswith("## ")]
    lines = text.splitlines()
    for i in starts:
        if lines[i].strip() not in owned:
            return "\n" + "\n".join(lines[i:]) + "\n"
    return ""
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
