"""Many virtual clients: ``fl-kubeflow simulate`` against Flower 1.42's simulation engine (Ray).

The same workloads, one after the other in one run on this machine, each side measured the
same way: wall seconds from launching its command to its exit, round times as its server
counts them, and the peak of the summed resident memory of its whole process tree (every
descendant of the command, or a process of its session), sampled every 50 ms from /proc.
Writes benchmarks/simulation.md and benchmarks/simulation.json::

    .venv/bin/python benchmarks/simulation.py            # the four workloads (about 10 min)
    .venv/bin/python benchmarks/simulation.py --quick    # 100 numpy clients, 3 rounds (< 2 min)
    .venv/bin/python benchmarks/simulation.py --only keras numpy-1000
    .venv/bin/python benchmarks/simulation.py --only keras --no-flower   # ours alone, printed

Flower runs from its own venv (``--flower-python``, default /work/flwr-venv/bin/python;
``pip install 'flwr[simulation]==1.42.*' tensorflow-cpu scikit-learn`` there, never in the
project's venv) through benchmarks/flower_simulation.py. Final Keras accuracy is scored here,
for both sides alike: each final global model on the union of the clients' local test splits.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from perf_common import load_average, machine_lines, section_text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_FLOWER_PYTHON = Path("/work/flwr-venv/bin/python")
SAMPLE_INTERVAL_S = 0.05
RUN_TIMEOUT_S = 600.0
SEED = 0
PAGE = os.sysconf("SC_PAGE_SIZE")
# The Keras workload's training settings (McMahan et al.'s 2NN on digits, E = 1, B = 10).
KERAS = {"local_epochs": 1, "batch_size": 10, "learning_rate": 0.1}
TEST_FRACTION = 0.2  # the clients' local test share (TrainerOptions' default), as both sides use
# simulation.md's hand-written reading of the figures, kept when the tables are rewritten.
NOTES_SECTION = "## Reading the figures"


@dataclass(frozen=True)
class Workload:
    name: str
    trainer: str
    clients: int
    fraction_fit: float
    rounds: int
    fraction_evaluate: float = 0.0
    params: int = 100_000


WORKLOADS = [
    Workload("keras", "keras", 100, 0.1, 20, fraction_evaluate=0.1),
    Workload("numpy-100", "numpy", 100, 0.1, 10),
    Workload("numpy-1000", "numpy", 1000, 0.1, 10),
    Workload("numpy-10000", "numpy", 10000, 0.01, 10),
]
QUICK = [Workload("numpy-100", "numpy", 100, 0.1, 3)]
# Flower 1.42's figures measured before on this machine (issue 17): median round s, GB.
ANCHORS = {
    "keras": "23 s wall, 0.44 s, 2.84 GB",
    "numpy-100": "0.2 s, 1.12 GB",
    "numpy-1000": "1.1-1.3 s, 1.23 GB",
    "numpy-10000": "2.2 s, 1.25 GB",
}


# ----------------------------------------------------------------- process-tree memory


def _proc_table() -> dict[int, tuple[int, int, int, str]]:
    """Every process: pid -> (ppid, session id, resident bytes, name), from /proc/PID/stat."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                text = stat.read()
        except OSError:  # gone between the listing and the read
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        # After "pid (comm)": state, ppid, pgrp, session, ... rss (pages) is the 22nd.
        table[int(entry.name)] = (int(fields[1]), int(fields[3]), int(fields[21]) * PAGE, name)
    return table


def tree_pids(root: int, table: dict[int, tuple[int, int, int, str]]) -> set[int]:
    """``root``, its descendants, and every process of its session (daemons that left it)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in found or pid not in table:
            continue
        found.add(pid)
        todo.extend(children.get(pid, []))
    # The command runs in a session of its own (start_new_session), which its processes keep.
    found.update(pid for pid, (_, sid, _, _) in table.items() if sid == root)
    return found


@dataclass
class TreeMemory:
    """Samples the summed RSS of a process tree on a thread; keeps the peak and what made it."""

    root: int
    peak: int = 0
    peak_parts: list[tuple[str, int]] = field(default_factory=list)
    peak_processes: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            table = _proc_table()
            pids = tree_pids(self.root, table)
            total = sum(table[p][2] for p in pids)
            self.samples += 1
            if total > self.peak:
                self.peak, self.peak_processes = total, len(pids)
                self.peak_parts = sorted(((table[p][3], table[p][2]) for p in pids), key=_rss)
            self._stop.wait(SAMPLE_INTERVAL_S)

    def stop(self) -> None:
        self._stop.set()

    def leftovers(self) -> set[int]:
        table = _proc_table()
        return tree_pids(self.root, table) - {self.root}


def _rss(part: tuple[str, int]) -> int:
    return -part[1]


def run_measured(command: list[str], log: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run ``command`` to its end; its wall seconds and its process tree's peak summed RSS."""
    load_before = load_average()
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        memory = TreeMemory(proc.pid)
        sampler = threading.Thread(target=memory.run, daemon=True)
        sampler.start()
        try:
            code = proc.wait(RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        wall = time.perf_counter() - started
        memory.stop()
        sampler.join(5)
        # Whatever the command left behind (a Ray daemon, a worker) is ours to end.
        for pid in memory.leftovers() | ({proc.pid} if code is None else set()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(30)
    if code != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{command[:3]} ended with {code} after {wall:.0f} s:\n{tail}")
    return {
        "wall_s": wall,
        "peak_rss_bytes": memory.peak,
        "peak_processes": memory.peak_processes,
        "peak_parts": _summarise_parts(memory.peak_parts),
        "samples": memory.samples,
        "load_before": load_before,
        "load_after": load_average(),
    }


def _summarise_parts(parts: list[tuple[str, int]]) -> dict[str, int]:
    """Bytes at the peak by process name (Ray's workers are all named like their task)."""
    summary: dict[str, int] = {}
    for name, rss in parts:
        summary[name] = summary.get(name, 0) + rss
    return dict(sorted(summary.items(), key=lambda item: -item[1]))


# ----------------------------------------------------------------- the two sides


def run_ours(work: Workload, folder: Path, workers: int) -> dict[str, Any]:
    out = folder / f"ours-{work.name}"
    command = [
        str(Path(sys.executable).parent / "fl-kubeflow"),
        "simulate",
        "--clients", str(work.clients),
        "--fraction-fit", str(work.fraction_fit),
        "--rounds", str(work.rounds),
        "--trainer", work.trainer,
        "--workers", str(workers),
        "--seed", str(SEED),
        "--output", str(out),
    ]  # fmt: skip
    if work.fraction_evaluate:  # numpy clients never evaluate; simulate refuses 0
        command += ["--fraction-evaluate", str(work.fraction_evaluate)]
    if work.trainer == "numpy":
        command += ["--params", str(work.params)]
    else:
        command += ["--model", "mlp", "--dataset", "digits", "--partition", "iid"]
        command += [arg for key, value in KERAS.items() for arg in (_flag(key), str(value))]
    measured = run_measured(command, folder / f"ours-{work.name}.log", dict(os.environ))
    summary = json.loads((out / "simulation.json").read_text())
    history = json.loads((out / "history.json").read_text())
    measured.update(
        round_s=summary["round_s"],
        median_round_s=summary["median_round_s"],
        own_peak_rss_bytes=summary["peak_rss_bytes"],
        contributors=[len(r.get("contributors", [])) for r in history["rounds"] if r["round"]],
        weights=str(out / "weights.safetensors"),
    )
    return measured


def run_flower(
    work: Workload, folder: Path, flower_python: Path, cpus_per_client: float
) -> dict[str, Any]:
    out = folder / f"flower-{work.name}.json"
    command = [
        str(flower_python),
        str(HERE / "flower_simulation.py"),
        "--workload", work.trainer,
        "--clients", str(work.clients),
        "--fraction-fit", str(work.fraction_fit),
        "--fraction-evaluate", str(work.fraction_evaluate),
        "--rounds", str(work.rounds),
        "--params", str(work.params),
        "--seed", str(SEED),
        "--cpus-per-client", str(cpus_per_client),
        "--output", str(out),
    ]  # fmt: skip
    command += [arg for key, value in KERAS.items() for arg in (_flag(key), str(value))]
    # Flower's venv, not ours: drop this venv's variables.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    if work.trainer == "numpy":
        env["PYTHONPATH"] = str(_tensorflow_hider(folder))
    measured = run_measured(command, folder / f"flower-{work.name}.log", env)
    report = json.loads(out.read_text())
    measured.update(
        round_s=report["round_s"],
        median_round_s=report["median_round_s"],
        weights=report.get("final_weights"),
        evaluations=report["evaluations"],
    )
    return measured


def _tensorflow_hider(folder: Path) -> Path:
    """A PYTHONPATH folder whose sitecustomize.py makes ``import tensorflow`` fail.

    Flower's Ray transport imports TensorFlow whenever it is installed
    (flwr/simulation/ray_transport/utils.py), in the driver and in every actor: about 0.5 GB a
    process that the numpy workloads never use. Every Python process of Flower's run (Ray's
    inherit the environment) runs this first, so the numpy rows get Flower's best case.
    """
    hider = folder / "hide-tensorflow"
    hider.mkdir(exist_ok=True)
    (hider / "sitecustomize.py").write_text("import sys\n\nsys.modules['tensorflow'] = None\n")
    return hider


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def keras_accuracy(work: Workload, ours: str, flower: str) -> tuple[float, float, int]:
    """Both final models' accuracy on the union of the clients' local test splits."""
    import numpy as np
    from safetensors.numpy import load_file

    from fl_kubeflow.training.datasets import BUILTIN_DATASETS, client_splits, load_full_dataset
    from fl_kubeflow.training.models import build_model, set_weights

    data = load_full_dataset("digits")
    splits = client_splits(data.y, work.clients, "iid", SEED, TEST_FRACTION)
    test = np.sort(np.concatenate([t for _, t in splits]))
    x, y = data.features(test), data.y[test]
    info = BUILTIN_DATASETS["digits"]
    model = build_model("mlp", info.input_shape, info.num_classes, SEED)

    def accuracy() -> float:
        return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))

    set_weights(model, load_file(ours))
    ours_acc = accuracy()
    with np.load(flower) as arrays:
        model.set_weights([arrays[f"arr_{i}"] for i in range(len(arrays.files))])
    return ours_acc, accuracy(), len(y)


def flower_versions(flower_python: Path) -> str:
    code = (
        "from importlib import metadata as m; print(', '.join(f'{p} ' + m.version(p) for p in "
        "('flwr', 'ray', 'tensorflow-cpu', 'keras', 'numpy')))"
    )
    done = subprocess.run([str(flower_python), "-c", code], capture_output=True, text=True)
    return done.stdout.strip() or done.stderr.strip()[-200:]


# ----------------------------------------------------------------- the table


def _gb(value: float) -> str:
    return f"{value / 1e9:.2f}"


def _verdict(ours: float, flower: float, goal_ratio: float) -> str:
    ratio = ours / flower
    return f"{ratio:.2f}x: {'met' if ratio <= goal_ratio and ours < flower else 'missed'}"


def table_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| workload | measure | ours | Flower | ours / Flower: goal | Flower anchor (issue 17) |",
        "| --- | --- | ---: | ---: | --- | --- |",
    ]
    for row in results:
        work, ours, flower = row["workload"], row["ours"], row["flower"]
        name = (
            f"{work['name']}: {work['clients']} clients, C = {work['fraction_fit']:g}, "
            f"{work['rounds']} rounds"
        )
        anchor = ANCHORS.get(work["name"], "")
        failed = [side for side in ("ours", "flower") if "error" in row[side]]
        if failed:
            reasons = "; ".join(f"{side} failed: {_reason(row[side]['error'])}" for side in failed)
            lines.append(f"| {name} | - | - | - | {reasons} | {anchor} |")
            continue
        cells = [
            ("wall s", ours["wall_s"], flower["wall_s"], 1.0, "{:.1f}"),
            ("median round s", ours["median_round_s"], flower["median_round_s"], 1.0, "{:.3f}"),
        ]
        for measure, a, b, goal, fmt in cells:
            lines.append(
                f"| {name} | {measure} | {fmt.format(a)} | {fmt.format(b)} | "
                f"{_verdict(a, b, goal)} (less) | {anchor} |"
            )
            name, anchor = "", ""
        lines.append(
            f"| | peak summed RSS GB | {_gb(ours['peak_rss_bytes'])} | "
            f"{_gb(flower['peak_rss_bytes'])} | "
            f"{_verdict(ours['peak_rss_bytes'], flower['peak_rss_bytes'], 0.5)} (<= 0.5) | |"
        )
        if "accuracy" in row:
            acc = row["accuracy"]
            lines.append(
                f"| | final accuracy ({acc['test_examples']} test examples) | "
                f"{acc['ours']:.3f} | {acc['flower']:.3f} | same workload: close | |"
            )
    return lines


def _reason(error: str) -> str:
    """The line of a failed command's output that says why (its CLI's 'failed' line)."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    said = [line for line in lines if "failed" in line or "interrupted" in line]
    return (said or lines or ["?"])[-1][:200].replace("|", "/")


def memory_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = ["", "Where the memory is at each side's peak (MB by process name, largest five):", ""]
    for row in results:
        for side in ("ours", "flower"):
            m = row[side]
            if "error" in m:
                continue
            parts = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in list(m["peak_parts"].items())[:5])
            lines.append(
                f"- {row['workload']['name']}, {side} (1-minute load {m['load_before']:.1f} "
                f"before): {m['peak_processes']} processes; {parts}"
            )
    return lines


def write_markdown(path: Path, meta: dict[str, Any], results: list[dict[str, Any]]) -> None:
    lines = [
        "# Many virtual clients: `fl-kubeflow simulate` against Flower's simulation engine",
        "",
        f"Made by `.venv/bin/python benchmarks/simulation.py {meta['argv']}` on {meta['date']} in "
        f"{meta['minutes']:.1f} minutes (waits for the lock included), both sides of a "
        "workload one after the other in this one run; 1-minute "
        f"load average {meta['load_start']:.2f} at the start, {meta['load_end']:.2f} at the end "
        "(the machine is shared; each run's own figures are in simulation.json).",
        *machine_lines(),
        *[
            f"- Rows not re-run by this command are from `benchmarks/simulation.py "
            f"{m['argv']}` on {m['date']} (load {m['load_start']:.2f} at its start), commit "
            f"{m['commit']}."
            for m in meta.get("earlier_runs", [])[:1]
        ],
        f"- Flower's venv: {meta['flower_versions']}; project commit {meta['commit']}",
        f"- Ours: `fl-kubeflow simulate --workers {meta['workers']}` (the real server process "
        "and the workers, HTTP on loopback). Flower: `run_simulation` (Message API, FedAvg) "
        f"with `num_cpus = {meta['cpus_per_client']:g}` per ClientApp, so "
        f"{int((os.cpu_count() or 2) // meta['cpus_per_client'])} Ray actors on the 2 cores.",
        "- Keras: the project's `mlp` (McMahan et al.'s 2NN: two hidden ReLU layers of 200) on "
        "digits, iid shards, 20% of each shard held out locally, SGD learning rate 0.1 with "
        "momentum 0.9 (the project's SGD), E = 1, B = 10, the same seeded initial weights and "
        "shards on both sides (Flower's script imports the project's model and split code); "
        "federated evaluation by 10% of the clients each round. Numpy: one 100,000-float32 "
        "tensor, each client returns the global plus a small change, no evaluation.",
        "- Wall s: launching the command to its exit (start-up, Ray or the server and workers, "
        "TensorFlow imports, every round). Median round s: the server's own round durations "
        "(ours: history.json; Flower: one configure_train to the next). Peak summed RSS: the "
        "peak over 50 ms samples of the sum over the command's whole process tree (for Flower "
        "the driver, Ray's daemons and its actors).",
        "- Goal (issue 17): less wall time and at most half the memory of Flower on each workload.",
        "",
        *table_lines(results),
        *memory_lines(results),
        "",
    ]
    notes = section_text(path, NOTES_SECTION)
    path.write_text("\n".join(lines) + (f"\n{notes}" if notes else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 numpy clients, 3 rounds")
    parser.add_argument("--only", nargs="+", choices=[w.name for w in WORKLOADS])
    parser.add_argument("--workers", type=int, default=2, help="ours: simulate --workers")
    parser.add_argument("--cpus-per-client", type=float, default=1.0, help="Flower's num_cpus")
    parser.add_argument("--flower-python", type=Path, default=DEFAULT_FLOWER_PYTHON)
    parser.add_argument(
        "--no-flower",
        action="store_true",
        help="measure ours only (print it; no table is written): before/after checks",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="the table's file (default: simulation.md; --quick writes none unless given)",
    )
    parser.add_argument("--keep", type=Path, help="keep the run folders here")
    parser.add_argument(
        "--rewrite",
        action="store_true",
        help="measure nothing: rewrite the output's tables from its .json",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other workloads' rows of the existing output's .json (re-run some)",
    )
    parser.add_argument(
        "--lock",
        type=Path,
        help="hold this lock file (flock) while measuring each workload, released between them",
    )
    args = parser.parse_args()
    workloads = (
        QUICK if args.quick else [w for w in WORKLOADS if not args.only or w.name in args.only]
    )
    if args.rewrite:
        saved = json.loads((args.output or HERE / "simulation.md").with_suffix(".json").read_text())
        write_markdown(args.output or HERE / "simulation.md", saved["meta"], saved["results"])
        return 0
    if args.no_flower:
        return _ours_only(workloads, args)
    if not args.flower_python.exists():
        parser.error(f"no Flower venv at {args.flower_python}: see this script's docstring")
    started = time.perf_counter()
    meta: dict[str, Any] = {
        "argv": " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_start": load_average(),
        "workers": args.workers,
        "cpus_per_client": args.cpus_per_client,
        "flower_versions": flower_versions(args.flower_python),
        "commit": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }
    output = args.output or (None if args.quick else HERE / "simulation.md")
    earlier: list[dict[str, Any]] = []
    if args.merge and output is not None and output.with_suffix(".json").exists():
        previous = json.loads(output.with_suffix(".json").read_text())
        names = {w.name for w in workloads}
        earlier = [r for r in previous["results"] if r["workload"]["name"] not in names]
        meta["earlier_runs"] = [previous["meta"], *previous["meta"].get("earlier_runs", [])]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="simbench-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for work in workloads:
            row: dict[str, Any] = {"workload": work.__dict__}
            sides = {
                "ours": lambda w=work: run_ours(w, folder, args.workers),
                "flower": lambda w=work: run_flower(
                    w, folder, args.flower_python, args.cpus_per_client
                ),
            }
            with _held(args.lock):
                _measure_sides(work, row, sides)
            if work.trainer == "keras" and all("error" not in row[side] for side in sides):
                ours_acc, flower_acc, count = keras_accuracy(
                    work, row["ours"]["weights"], row["flower"]["weights"]
                )
                row["accuracy"] = {"ours": ours_acc, "flower": flower_acc, "test_examples": count}
                print(work.name, "accuracy", row["accuracy"], flush=True)
            results.append(row)
            # Written after every workload: a run cut short keeps what it measured.
            meta.update(load_end=load_average(), minutes=(time.perf_counter() - started) / 60)
            if output is not None:
                rows = sorted([*earlier, *results], key=_workload_order)
                write_markdown(output, meta, rows)
                output.with_suffix(".json").write_text(
                    json.dumps({"meta": meta, "results": rows}, indent=2) + "\n"
                )
    print("\n".join(table_lines(results)))
    return 0


def _ours_only(workloads: list[Workload], args: argparse.Namespace) -> int:
    """Each workload's ours side, printed with its processes' own peaks."""
    with tempfile.TemporaryDirectory(prefix="simbench-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for work in workloads:
            row: dict[str, Any] = {"workload": work.__dict__}
            with _held(args.lock):
                _measure_sides(
                    work, row, {"ours": lambda w=work: run_ours(w, folder, args.workers)}
                )
            own = row["ours"].get("own_peak_rss_bytes")
            if own is not None:
                workers = ", ".join(f"{w / 2**20:.0f}" for w in own["workers"])
                print(
                    f"{work.name} ours: server {own['server'] / 2**20:.0f} MiB, workers "
                    f"{workers} MiB, sum {own['sum'] / 2**20:.0f} MiB (simulation.json)",
                    flush=True,
                )
    return 0


def _workload_order(row: dict[str, Any]) -> int:
    return [w.name for w in WORKLOADS].index(row["workload"]["name"])


@contextlib.contextmanager
def _held(lock: Path | None) -> Iterator[None]:
    """Hold ``lock`` (the machine-wide benchmark lock) exclusively, if given."""
    if lock is None:
        yield
        return
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _measure_sides(
    work: Workload, row: dict[str, Any], sides: dict[str, Callable[[], dict[str, Any]]]
) -> None:
    for side, run in sides.items():
        try:
            row[side] = run()
        except RuntimeError as exc:  # one failed command must not lose the others
            row[side] = {"error": str(exc)[-2000:]}
            print(work.name, side, "FAILED", str(exc)[-500:], flush=True)
        else:
            print(work.name, side, _brief(row[side]), flush=True)


def _brief(measured: dict[str, Any]) -> str:
    return (
        f"wall {measured['wall_s']:.1f} s, median round {measured['median_round_s']:.3f} s, "
        f"peak RSS {_gb(measured['peak_rss_bytes'])} GB, load {measured['load_before']:.1f}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
