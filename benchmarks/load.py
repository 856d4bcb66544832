"""Load benchmark: one server process, N concurrent clients from several load processes.

Each load process (``load.py swarm``) runs its share of the clients as threads
(``client/swarm.py``: FederatedClient + a numpy delta trainer, real HTTP, own
sessions), so the load generator is not one Python process's GIL. The server's and
the load processes' CPU seconds are measured, so a reader can see which one set the
pace. Results are kept in benchmarks/load.json (one row per run, replaced by a run
of the same cell and label) and benchmarks/load.md is written from all of them::

    .venv/bin/python benchmarks/load.py --params 2410 --clients 100 200 400 1000
    .venv/bin/python benchmarks/load.py --params 100000 --clients 1000 --label after
    .venv/bin/python benchmarks/load.py --params 2410 --clients 10000 --rounds 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from perf_common import PYTHON, machine_lines, model_shapes, processes, start_server

from fl_kubeflow.auth import TOKEN_ENV, new_token

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "load.json"
TICK = os.sysconf("SC_CLK_TCK")
SAMPLE_EVERY = 0.1


def raise_open_files(wanted: int) -> int:
    """Raise this process's open-file limits (inherited by its children) to ``wanted``;
    return the soft limit now in force. Root may raise the hard limit too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in ((max(wanted, hard), max(wanted, hard)), (min(wanted, hard), hard)):
        if soft >= wanted:
            break
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, target)
            soft = target[0]
    return soft


class ProcessSampler:
    """Samples a process's CPU seconds and thread count from /proc until it exits."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu_s = 0.0
        self.peak_threads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                stat = Path(f"/proc/{self.pid}/stat").read_text()
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            fields = stat.rsplit(")", 1)[1].split()
            self.cpu_s = (int(fields[11]) + int(fields[12])) / TICK  # utime + stime
            for line in status.splitlines():
                if line.startswith("Threads:"):
                    self.peak_threads = max(self.peak_threads, int(line.split()[1]))
            self._stop.wait(SAMPLE_EVERY)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def one_run(args: argparse.Namespace, num_clients: int, folder: Path) -> dict[str, Any]:
    from fl_kubeflow import files, wire
    from fl_kubeflow.client.numpy_trainers import random_weights

    shapes = model_shapes(args.params)
    initial = folder / "initial.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    files.write_bytes(initial, wire.encode(random_weights(shapes, seed=0)))
    token = new_token()
    load_start = os.getloadavg()[0]
    per_process = -(-num_clients // args.load_processes)
    with processes(folder) as procs:
        py_spy = shutil.which("py-spy", path=str(Path(PYTHON).parent)) or "py-spy"
        spy = [py_spy, "record", "-r", "100", "-f", "raw", "-o", str(args.profile), "--"]
        url = start_server(
            procs,
            folder,
            num_clients,
            args.rounds,
            "--initial-weights",
            str(initial),
            "--join-timeout",
            str(args.timeout),
            "--round-timeout",
            str(args.timeout),
            "--grace-period",
            "30",
            env={TOKEN_ENV: token},
            prefix=spy if args.profile else (),
        )
        server_pid = procs.procs[0][1].pid
        if args.profile:  # the server is py-spy's child
            server_pid = int(
                subprocess.check_output(["pgrep", "-P", str(server_pid)], text=True).split()[0]
            )
        server = ProcessSampler(server_pid)
        started = time.perf_counter()
        loads = []
        for number, first in enumerate(range(0, num_clients, per_process)):
            count = min(per_process, num_clients - first)
            proc = procs.start(
                f"load-{number}",
                [
                    PYTHON,
                    str(Path(__file__).resolve()),
                    "swarm",
                    "--server",
                    url,
                    "--first-id",
                    str(first),
                    "--count",
                    str(count),
                    "--params",
                    str(args.params),
                    "--timeout",
                    str(args.timeout),
                    "--summary",
                    str(folder / f"load-{number}.json"),
                ],
                env={TOKEN_ENV: token, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
            )
            loads.append(ProcessSampler(proc.pid))
        procs.wait_all(args.timeout + 120)
        wall = time.perf_counter() - started
        server.stop()
        for sampler in loads:
            sampler.stop()
    history = json.loads((folder / "out" / "history.json").read_text())
    swarms = [json.loads(p.read_text()) for p in sorted(folder.glob("load-*.json"))]
    rounds = [r for r in history["rounds"] if r["round"] >= 1]
    timed = rounds[1:] or rounds  # round 1 also waits for the last joins
    return {
        "label": args.label,
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "params": args.params,
        "clients": num_clients,
        "load_processes": len(swarms),
        "rounds": len(rounds),
        "status": history["status"],
        "errors": sum(s["errors"] for s in swarms),
        "error_samples": [e for s in swarms for e in s["error_samples"]][:5],
        "median_round_s": statistics.median(r["duration_s"] for r in timed),
        "max_round_s": max(r["duration_s"] for r in timed),
        "wall_s": wall,
        "server_cpu_s": server.cpu_s,
        "load_cpu_s": sum(s["cpu_s"] for s in swarms),
        "server_peak_threads": server.peak_threads,
        "server_peak_rss_mb": history["server_peak_rss_bytes"] / 2**20,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
    }


def swarm_main(argv: list[str]) -> int:
    """One load process: ``count`` clients as threads, ids from ``first-id``."""
    from fl_kubeflow.client.numpy_trainers import DeltaTrainer
    from fl_kubeflow.client.swarm import run_swarm

    parser = argparse.ArgumentParser(prog="load.py swarm")
    parser.add_argument("--server", required=True)
    parser.add_argument("--first-id", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--params", type=int, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--summary", type=Path, required=True)
    args = parser.parse_args(argv)
    shapes = model_shapes(args.params)
    # Many threads, little stack each: the clients' frames are shallow.
    threading.stack_size(512 * 1024)
    result = run_swarm(
        args.server,
        args.count,
        lambda i: DeltaTrainer(shapes, delta=0.01, evaluate_rounds=False),
        token=os.environ.get(TOKEN_ENV),
        timeout=args.timeout,
        first_id=args.first_id,
    )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    args.summary.write_text(
        json.dumps(
            {
                "errors": len(result.errors),
                "error_samples": [f"{k}: {v!r}" for k, v in list(result.errors.items())[:3]],
                "cpu_s": usage.ru_utime + usage.ru_stime,
            }
        )
    )
    return 0 if not result.errors else 1


def write_markdown(rows: list[dict[str, Any]], path: Path) -> None:
    lines = [
        "# Load: many concurrent clients against one server",
        "",
        "Made by `benchmarks/load.py` (rows from benchmarks/load.json, newest run of each "
        "cell). One `fl-kubeflow server` process (waitress, default options, FedAvg, token "
        "auth, initial model from a file); N clients from several load processes "
        "(`load.py swarm`, N / processes client threads each: FederatedClient + "
        "DeltaTrainer, no evaluation), all on 127.0.0.1. Round time is the server's "
        "(history.json `duration_s`), median over the rounds after the first (round 1 "
        "also waits for the last joins). CPU s: the server's, and all load processes' "
        "together, over the whole run (joins included); the machine has 2 cores, so "
        "server + load CPU over wall time shows how busy it was. Load: the 1-minute load "
        "average at the start of the run, which counts other work on this shared machine.",
        "",
        *machine_lines(),
        "",
        "| label | P | clients | load procs | rounds | errors | median round s "
        "| max round s | wall s | server CPU s | load CPU s | server threads "
        "| server RSS MB | load avg | when |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['params']:,} | {r['clients']:,} | {r['load_processes']} "
            f"| {r['rounds']} | {r['errors']} | {r['median_round_s']:.3f} "
            f"| {r['max_round_s']:.3f} | {r['wall_s']:.1f} | {r['server_cpu_s']:.1f} "
            f"| {r['load_cpu_s']:.1f} | {r['server_peak_threads']} "
            f"| {r['server_peak_rss_mb']:.0f} | {r['load_start']:.1f} | {r['when']} |"
        )
    notes = path.read_text().split("\n## ", 1) if path.exists() else []
    tail = f"\n## {notes[1]}" if len(notes) == 2 else ""
    path.write_text("\n".join(lines) + "\n" + tail)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "swarm":
        return swarm_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 200, 400, 1000])
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--load-processes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--label", default="now", help="names the server version measured")
    parser.add_argument("--profile", type=Path, help="run the server under py-spy into this file")
    parser.add_argument("--output", type=Path, default=HERE / "load.md")
    args = parser.parse_args()
    soft = raise_open_files(4 * max(args.clients) + 4096)
    print(f"open-file limit {soft}", flush=True)
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.clients:
            row = one_run(args, n, Path(tmp) / f"n{n}")
            print(json.dumps(row), flush=True)
            failed = failed or row["errors"] > 0 or row["status"] != "finished"
            key = (row["label"], row["params"], row["clients"], row["load_processes"])
            rows = [
                r
                for r in rows
                if (r["label"], r["params"], r["clients"], r["load_processes"]) != key
            ]
            rows.append(row)
    rows.sort(key=lambda r: (r["label"], r["params"], r["load_processes"], r["clients"]))
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
    write_markdown(rows, args.output)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
