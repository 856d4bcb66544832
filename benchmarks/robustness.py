"""Byzantine robustness on digits: 1 of 5 clients sends garbage; which rules survive it?

For each partition, strategy and seed, runs a clean federation (5 honest Keras
clients) and an attacked one (client 4 replaced by
``fl_kubeflow.client.adversarial``, which sends the global model plus Gaussian
noise of std ``--scale`` instead of its trained model), all real processes on
loopback, and tabulates the final model's accuracy on the union of the five
clients' local test splits, plus FedAvg without client 4 at all (what losing its
data alone costs). Writes benchmarks/robustness.md::

    .venv/bin/python benchmarks/robustness.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fl_bench

HERE = Path(__file__).resolve().parent
STRATEGIES: list[tuple[str, dict]] = [
    ("fedavg", {}),
    ("fedmedian", {}),
    ("fedtrimmedavg", {"beta": 0.2}),
    ("krum", {"num_malicious": 1}),
    ("multikrum", {"num_malicious": 1}),
]
ROBUST = {"fedmedian", "fedtrimmedavg", "krum"}


def run_final(spec: fl_bench.RunSpec, folder: Path, shards: int) -> float:
    """Run ``spec``; the final model's accuracy on the union of all shards' test splits."""
    started = time.monotonic()
    fl_bench.run(spec, folder)
    acc = fl_bench.central_accuracy(fl_bench.final_weights(folder), spec, shards)
    print(f"  {folder.name}: {acc:.4f} ({time.monotonic() - started:.0f}s)", flush=True)
    return acc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--partitions", default="iid,dirichlet:0.3")
    parser.add_argument("--attack", default="noise", choices=["noise", "scale", "sign-flip"])
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--output", type=Path, default=HERE / "robustness.md")
    parser.add_argument("--json", type=Path, default=None, help="also dump raw results here")
    args = parser.parse_args()
    n = args.clients
    attacker = n - 1
    seeds = [int(s) for s in args.seeds.split(",")]
    attack_text = (
        f"the global model plus N(0, {args.scale:g}^2) noise on every weight"
        if args.attack == "noise"
        else f"the global model {'plus' if args.attack == 'scale' else 'minus'} "
        f"{args.scale:g} x its honest change"
    )
    lines = [
        "# Robustness on digits: one Byzantine client of five",
        "",
        f"Made by `.venv/bin/python benchmarks/robustness.py` on {date.today()} "
        f"({platform.machine()}, Python {platform.python_version()}).",
        "",
        f"{n} clients, {args.rounds} rounds, mlp, default training options (2 local epochs, "
        f"batch 16, SGD lr 0.05 momentum 0.9), seeds {args.seeds} (the seed fixes the "
        "partition, the initial model and the shuffles). Every run is a real server process "
        f"and {n} client processes. Attacked runs replace client {attacker} by "
        f"`python -m fl_kubeflow.cli.adversarial_cmd --attack {args.attack} --attack-scale "
        f"{args.scale:g}`: every round it sends {attack_text}, with an honest example count.",
        "",
        "Accuracy: the final global model on the union of all five clients' local test "
        "splits (the same test set for every run of a seed; equal to the run's federated "
        "evaluation). Columns give the mean over seeds; 'change' is attacked minus clean "
        "in points, per seed in brackets. Criterion (issue 7): fedmedian, fedtrimmedavg and "
        "krum within 2 points of their clean run (mean over seeds); fedavg degrades.",
        f"'4 honest clients' is FedAvg with client {attacker} absent (the same partition "
        f"into {n}, its shard unused): what losing that client's data alone costs.",
        "",
    ]
    raw: dict[str, dict[str, list[float]]] = {}
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for partition in args.partitions.split(","):
            tag = partition.replace(":", "-")
            print(partition, flush=True)
            rows: list[str] = []
            for name, options in STRATEGIES:
                clean, attacked = [], []
                for seed in seeds:
                    for bad, out in ((False, clean), (True, attacked)):
                        spec = fl_bench.RunSpec(
                            name,
                            options,
                            clients=n,
                            rounds=args.rounds,
                            partition=partition,
                            seed=seed,
                            attack=fl_bench.Attack(attacker, args.attack, args.scale)
                            if bad
                            else None,
                        )
                        folder = (
                            Path(tmp) / f"{tag}-{name}-s{seed}-{'attacked' if bad else 'clean'}"
                        )
                        out.append(run_final(spec, folder, n))
                raw[f"{partition} {name}"] = {"clean": clean, "attacked": attacked}
                changes = [100 * (b - c) for c, b in zip(clean, attacked, strict=True)]
                mean_change = sum(changes) / len(changes)
                verdict = "yes" if mean_change >= -2.0 else "no"
                if name in ROBUST and verdict == "no":
                    failures.append(f"{partition} {name}: {mean_change:+.1f} points")
                opts = ", ".join(f"{k}={v}" for k, v in options.items()) or "-"
                per_seed = " / ".join(f"{c:+.1f}" for c in changes)
                rows.append(
                    f"| {name} | {opts} | {_mean(clean):.4f} | {_mean(attacked):.4f} "
                    f"| {mean_change:+.1f} ({per_seed}) | {verdict} |"
                )
            honest = []
            for seed in seeds:
                spec = fl_bench.RunSpec(
                    "fedavg",
                    clients=n - 1,
                    partition_clients=n,
                    rounds=args.rounds,
                    partition=partition,
                    seed=seed,
                )
                honest.append(run_final(spec, Path(tmp) / f"{tag}-honest-s{seed}", n))
            raw[f"{partition} fedavg 4 honest"] = {"clean": honest}
            lines += [
                f"## {partition}",
                "",
                "| strategy | options | clean | attacked | change, points (per seed) | robust? |",
                "| --- | --- | ---: | ---: | ---: | --- |",
                *rows,
                "",
                f"FedAvg with {n - 1} honest clients (client {attacker} absent): "
                f"{_mean(honest):.4f} (" + " / ".join(f"{a:.4f}" for a in honest) + ").",
                "",
            ]
    if failures:
        lines += ["Robust rules that missed the 2-point criterion: " + "; ".join(failures), ""]
    args.output.write_text("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))
    print(f"wrote {args.output}")
    return 0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


if __name__ == "__main__":
    raise SystemExit(main())
