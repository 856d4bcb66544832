"""One straggler among N clients: wall time to a target evaluation accuracy on digits for
synchronous FedAvg, synchronous FedAvg that closes rounds without the straggler, and
FedBuff (``--mode async``); written to benchmarks/stragglers.md::

    .venv/bin/python benchmarks/stragglers.py --lock /work/wt/bench.lock

(``--lock``: each run holds the machine's benchmark lock, so the three together do not
hold it for their whole ~5 minutes.)

Each cell is one ``fl-kubeflow local`` run (real server and client processes on
loopback) with ``--slow-clients 0=FACTOR``: client 0's fits take FACTOR times as long
(``client --slowdown``, a sleep of FACTOR - 1 times its measured fit after each fit).

- (a) sync: FedAvg, every round waits for all N clients.
- (b) sync, min_clients = N - 1: a round closes with N - 1 updates once
  ``round_timeout`` has passed. min_clients alone changes nothing (a round still waits
  for everyone until the timeout), so the timeout is what a user would set: twice a
  typical client's round, estimated from run (a) as its median round time divided by
  FACTOR (the straggler sets (a)'s pace), at least ``--min-round-timeout``.
- (c) FedBuff: ``--mode async``, K = N - 1, every client training at once.

Time to target: from the first round's start (every client has joined: client start-up,
an import of the framework, is the same in all cells and left out) to the end of the
first round (version) whose federated evaluation reaches the target accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from perf_common import load_average, machine_lines  # noqa: E402

REPORT = HERE / "stragglers.md"


@dataclass
class Cell:
    """One configuration's run and what it measured."""

    key: str  # its folder
    name: str
    setting: str
    args: list[str]
    history: dict[str, Any] | None = None
    wall_s: float = 0.0
    load: float = 0.0  # 1-minute load average when the run started

    def rounds(self) -> list[dict[str, Any]]:
        assert self.history is not None
        return [r for r in self.history["rounds"] if r["round"] > 0]

    def t0(self) -> float:
        return min(_time(r["started_at"]) for r in self.rounds())

    def ready_s(self, entry: dict[str, Any]) -> float:
        """Seconds from the first round's start until this round's model existed."""
        return _time(entry["started_at"]) + entry["duration_s"] - self.t0()

    def reached(self, target: float) -> dict[str, Any] | None:
        for entry in self.rounds():
            if _accuracy(entry) is not None and _accuracy(entry) >= target:
                return entry
        return None

    def final_accuracy(self) -> float | None:
        evaluated = [a for r in self.rounds() if (a := _accuracy(r)) is not None]
        return evaluated[-1] if evaluated else None

    def median_round_s(self) -> float:
        return statistics.median(r["duration_s"] for r in self.rounds())

    def straggler_share(self, straggler: str = "0") -> str:
        rounds = self.rounds()
        used = sum(1 for r in rounds if straggler in r["contributors"])
        return f"{used} of {len(rounds)}"


def _time(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _accuracy(entry: dict[str, Any]) -> float | None:
    evaluation = entry.get("evaluate") or {}
    return (evaluation.get("metrics") or {}).get("accuracy")


def run_cell(
    cell: Cell, common: list[str], folder: Path, timeout: float, lock: Path | None
) -> None:
    out = folder / cell.key
    command = [sys.executable, "-m", "fl_kubeflow", "local", *common, *cell.args]
    command += ["--output", str(out)]
    with contextlib.ExitStack() as stack:
        if lock is not None:
            handle = stack.enter_context(lock.open("a"))
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        cell.load = load_average()
        print(f"[{cell.name}] load {cell.load:.2f}: {' '.join(command[3:])}", flush=True)
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        cell.wall_s = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"[{cell.name}] failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    cell.history = json.loads((out / "history.json").read_text())


def table(cells: list[Cell], target: float) -> list[str]:
    lines = [
        f"| configuration | setting | rounds/versions to {target:.0%} | time to {target:.0%} (s) "
        "| final eval accuracy | median round/version (s) | straggler's updates used | load |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for cell in cells:
        hit = cell.reached(target)
        final = cell.final_accuracy()
        lines.append(
            f"| {cell.name} | {cell.setting} | "
            f"{hit['round'] if hit else 'not reached'} | "
            f"{f'{cell.ready_s(hit):.1f}' if hit else '-'} | "
            f"{f'{final:.4f}' if final is not None else '-'} | "
            f"{cell.median_round_s():.2f} | {cell.straggler_share()} | {cell.load:.1f} |"
        )
    return lines


def notes(sync: Cell, quorum: Cell, fedbuff: Cell, target: float) -> list[str]:
    """What the table says, from the runs themselves."""
    lines = []
    hits = {c.key: c.reached(target) for c in (sync, quorum, fedbuff)}
    if hits["sync"] and hits["fedbuff"]:
        a, c = sync.ready_s(hits["sync"]), fedbuff.ready_s(hits["fedbuff"])
        verdict = "met" if c < a else "missed"
        lines.append(
            f"- Goal (FedBuff reaches {target:.0%} in less wall time than synchronous "
            f"FedAvg): {verdict}, {c:.1f} s against {a:.1f} s ({a / c:.1f}x)."
        )
    else:
        lines.append(f"- Goal: not decided, a run did not reach {target:.0%}.")
    timed_out = [r for r in quorum.rounds() if "0" in (r.get("timed_out") or [])]
    others = [r["duration_s"] for r in quorum.rounds() if r not in timed_out]
    lines.append(
        "- (b): the straggler timed out in round(s) "
        f"{', '.join(str(r['round']) for r in timed_out) or 'none'} (each lasting "
        "round_timeout) and its update counted in "
        f"{quorum.straggler_share()} rounds. A timed-out client is set aside until it asks "
        "for the next model: meanwhile rounds close as soon as the other N - 1 have "
        "reported (median of the other rounds "
        f"{statistics.median(others) if others else float('nan'):.2f} s); a round it is back "
        "for waits for it up to round_timeout again. So (b) trains mostly without the "
        "straggler's data (iid here: little is lost), while (c) folds its updates in, "
        "staleness-weighted."
    )
    taus = [r["staleness"]["0"] for r in fedbuff.rounds() if "0" in (r.get("staleness") or {})]
    lines.append(
        f"- (c): the straggler's updates went into {len(taus)} of {len(fedbuff.rounds())} "
        "versions"
        + (f", with staleness {', '.join(map(str, taus))}" if taus else "")
        + " (weighted (1 + tau) ** -0.5); the others' into every version they could."
    )
    return lines


def curves(cells: list[Cell]) -> list[str]:
    lines = ["| configuration | (time s, accuracy) per round/version |", "| --- | --- |"]
    for cell in cells:
        points = [
            f"({cell.ready_s(r):.1f}, {a:.3f})"
            for r in cell.rounds()
            if (a := _accuracy(r)) is not None
        ]
        lines.append(f"| {cell.name} | {' '.join(points)} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="N")
    parser.add_argument("--factor", type=float, default=5.0, help="the straggler's slow-down")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of the sync runs")
    parser.add_argument(
        "--versions",
        type=int,
        default=None,
        help="versions of the async run (default: rounds * N / K, the same number of updates)",
    )
    parser.add_argument("--target", type=float, default=0.9, help="evaluation accuracy")
    parser.add_argument("--trainer", default="torch", help="keras or torch")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument(
        "--min-round-timeout", type=float, default=0.5, help="floor of (b)'s round_timeout"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--output", type=Path, default=REPORT)
    parser.add_argument("--lock", type=Path, default=None, help="flock this file per run")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs' folders here")
    args = parser.parse_args()

    n = args.clients
    k = n - 1
    versions = args.versions or -(-args.rounds * n // k)
    common = [
        "--trainer", args.trainer,
        "--dataset", "digits",
        "--model", "mlp",
        "--clients", str(n),
        "--local-epochs", str(args.local_epochs),
        "--learning-rate", str(args.learning_rate),
        "--slow-clients", f"0={args.factor:g}",
        "--join-timeout", "600",
        "--timeout", str(args.timeout),
    ]  # fmt: skip
    load_before = load_average()
    folder = Path(tempfile.mkdtemp(prefix="stragglers-"))
    try:
        sync = Cell(
            "sync",
            "(a) sync FedAvg",
            f"all {n} clients every round",
            ["--rounds", str(args.rounds)],
        )
        run_cell(sync, common, folder, args.timeout, args.lock)
        typical = sync.median_round_s() / args.factor
        round_timeout = max(args.min_round_timeout, 2 * typical)
        quorum = Cell(
            "quorum",
            "(b) sync, min_clients = N - 1",
            f"min_clients={n - 1}, round_timeout={round_timeout:.2f}s "
            f"(2 x {typical:.2f}s, a typical client's round)",
            [
                "--rounds", str(args.rounds),
                "--min-clients", str(n - 1),
                "--round-timeout", f"{round_timeout:.2f}",
            ],
        )  # fmt: skip
        run_cell(quorum, common, folder, args.timeout, args.lock)
        fedbuff = Cell(
            "fedbuff",
            "(c) FedBuff",
            f"--mode async, K={k}, max_concurrency={n}, staleness exponent 0.5",
            [
                "--rounds", str(versions),
                "--mode", "async",
                "--async-buffer-size", str(k),
            ],
        )  # fmt: skip
        run_cell(fedbuff, common, folder, args.timeout, args.lock)
        if args.keep is not None:
            shutil.copytree(folder, args.keep, dirs_exist_ok=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    load_after = load_average()
    cells = [sync, quorum, fedbuff]

    lines = [
        "# Stragglers: synchronous FedAvg vs FedBuff with one slow client",
        "",
        f"Made by `.venv/bin/python benchmarks/stragglers.py --lock /work/wt/bench.lock` on "
        f"{date.today().isoformat()}; 1-minute load average {load_before:.2f} before, "
        f"{load_after:.2f} after, and in the table's last column at each run's start (the "
        "machine is shared with other engineers' work: the load is theirs too).",
        "",
        *machine_lines(),
        "",
        f"Digits, {args.trainer} mlp, {n} clients (iid), {args.local_epochs} local epoch(s), "
        f"sgd lr {args.learning_rate:g}; client 0 is {args.factor:g}x slower "
        f"(`--slow-clients 0={args.factor:g}`). Sync runs: {args.rounds} rounds; FedBuff: "
        f"{versions} versions of K = {k} updates (the same number of updates). Time to "
        f"{args.target:.0%}: from the first round's start to the end of the first "
        "round/version whose federated evaluation reaches it (benchmarks/stragglers.py's "
        "docstring has the details).",
        "",
        *table(cells, args.target),
        "",
        *notes(sync, quorum, fedbuff, args.target),
        "",
        "Evaluation curves (seconds from the first round's start, accuracy):",
        "",
        *curves(cells),
        "",
        "Whole runs, client start-up included: "
        + ", ".join(f"{c.name} {c.wall_s:.0f} s" for c in cells)
        + ".",
        "",
    ]
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
