"""Byzantine robustness on digits: 1 of 5 clients sends garbage; which rules survive it?

For each partition and strategy, runs a clean federation (5 honest Keras clients)
and an attacked one (client 4 replaced by ``fl_kubeflow.client.adversarial``,
which sends the global model plus Gaussian noise of std ``--scale`` instead of its
trained model), all real processes on loopback, and tabulates the final federated
test accuracy (the global model evaluated on all five clients' local test splits;
the attacker evaluates honestly). Writes benchmarks/robustness.md::

    .venv/bin/python benchmarks/robustness.py
"""

from __future__ import annotations

import argparse
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--partitions", default="iid,dirichlet:0.3")
    parser.add_argument("--attack", default="noise", choices=["noise", "scale", "sign-flip"])
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--output", type=Path, default=HERE / "robustness.md")
    args = parser.parse_args()
    attacker = args.clients - 1
    lines = [
        "# Robustness on digits: one Byzantine client of five",
        "",
        f"Made by `.venv/bin/python benchmarks/robustness.py` on {date.today()} "
        f"({platform.machine()}, Python {platform.python_version()}).",
        "",
        f"{args.clients} clients, {args.rounds} rounds, mlp, default training options "
        "(2 local epochs, batch 16, SGD lr 0.05 momentum 0.9, seed 0). Attacked runs replace "
        f"client {attacker} by `python -m fl_kubeflow.client.adversarial --attack {args.attack} "
        f"--attack-scale {args.scale:g}`: every round it sends "
        + (
            f"the global model plus N(0, {args.scale:g}^2) noise on every weight"
            if args.attack == "noise"
            else f"the global model {'plus' if args.attack == 'scale' else 'minus'} "
            f"{args.scale:g} x its honest change"
        )
        + ", with an honest example count. Accuracy: the final global model's federated "
        "evaluation on all clients' local test splits (example-weighted).",
        "Criterion (issue 7): fedmedian, fedtrimmedavg and krum within 2 points of their clean "
        "run; fedavg degrades.",
        "",
    ]
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for partition in args.partitions.split(","):
            lines += [
                f"## {partition}",
                "",
                "| strategy | options | clean | attacked | change (points) | robust? |",
                "| --- | --- | ---: | ---: | ---: | --- |",
            ]
            for name, options in STRATEGIES:
                finals = []
                for attacked in (False, True):
                    spec = fl_bench.RunSpec(
                        name,
                        options,
                        clients=args.clients,
                        rounds=args.rounds,
                        partition=partition,
                        attack=fl_bench.Attack(attacker, args.attack, args.scale)
                        if attacked
                        else None,
                    )
                    folder = Path(tmp) / f"{partition.replace(':', '-')}-{name}-{int(attacked)}"
                    started = time.monotonic()
                    accs = fl_bench.accuracies(fl_bench.run(spec, folder))
                    finals.append(accs[-1])
                    print(
                        f"{partition} {name} {'attacked' if attacked else 'clean'}: "
                        f"{accs[-1]:.4f} ({time.monotonic() - started:.0f}s)",
                        flush=True,
                    )
                clean, bad = finals
                change = 100 * (bad - clean)
                verdict = "yes" if change >= -2.0 else "no"
                if name in ROBUST and verdict == "no":
                    failures.append(f"{partition} {name}: {change:+.1f} points")
                opts = ", ".join(f"{k}={v}" for k, v in options.items()) or "-"
                lines.append(
                    f"| {name} | {opts} | {clean:.4f} | {bad:.4f} | {change:+.1f} | {verdict} |"
                )
            lines.append("")
    if failures:
        lines += ["Robust rules that missed the 2-point criterion: " + "; ".join(failures), ""]
    args.output.write_text("\n".join(lines))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
