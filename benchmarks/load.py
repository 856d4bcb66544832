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
import http.client
import json
import os
import resource
import selectors
import shutil
import socket
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
NOTES = "\n## Diagnosis"


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
        spy = [py_spy, "record", "--gil", "-r", "100", "-f", "raw", "-o", str(args.profile), "--"]
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


def hold_run(args: argparse.Namespace, num_clients: int, folder: Path) -> dict[str, Any]:
    """``num_clients`` join and hold long-polls for ``args.hold_seconds`` (the round waits
    for one more client); then that one joins and every held poll must get the model."""
    from fl_kubeflow import files, wire
    from fl_kubeflow.auth import auth_headers
    from fl_kubeflow.client.numpy_trainers import random_weights

    initial = folder / "initial.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    files.write_bytes(initial, wire.encode(random_weights(model_shapes(args.params), seed=0)))
    token = new_token()
    load_start = os.getloadavg()[0]
    per_process = -(-num_clients // args.load_processes)
    with processes(folder) as procs:
        url = start_server(
            procs,
            folder,
            num_clients + 1,
            1,
            "--initial-weights",
            str(initial),
            "--join-timeout",
            str(args.timeout),
            env={TOKEN_ENV: token},
        )
        server_pid = procs.procs[0][1].pid
        server = ProcessSampler(server_pid)
        started = time.monotonic()
        holders = []
        for number, first in enumerate(range(0, num_clients, per_process)):
            command = [PYTHON, str(Path(__file__).resolve()), "hold", "--server", url]
            command += ["--first-id", str(first), "--count"]
            command += [str(min(per_process, num_clients - first)), "--wait", "20"]
            command += ["--timeout", str(args.timeout), "--held", str(folder / f"held-{number}")]
            command += ["--summary", str(folder / f"hold-{number}.json")]
            procs.start(f"hold-{number}", command, env={TOKEN_ENV: token})
            holders.append(folder / f"held-{number}")
        while not all(h.exists() for h in holders):
            if time.monotonic() - started > args.timeout:
                raise RuntimeError("the clients did not all join in time")
            time.sleep(0.1)
        joined_s = time.monotonic() - started
        time.sleep(args.hold_seconds)  # holding: the point of the measurement
        status = Path(f"/proc/{server_pid}/status").read_text()
        rss_kb = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS"))
        fds = len(os.listdir(f"/proc/{server_pid}/fd"))
        opened = time.monotonic()
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request(
            "POST",
            "/v1/join",
            body=json.dumps({"client_id": "opener"}),
            headers={"X-FL-Client-Id": "opener", **auth_headers(token)},
        )
        conn.getresponse().read()
        for _, proc in procs.procs[1:]:
            proc.wait(args.timeout)
        answered_s = time.monotonic() - opened
        server.stop()
    holds = [json.loads(p.read_text()) for p in sorted(folder.glob("hold-*.json"))]
    return {
        "kind": "hold",
        "label": args.label,
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "params": args.params,
        "clients": num_clients,
        "load_processes": len(holds),
        "errors": sum(h["errors"] for h in holds),
        "error_samples": [e for h in holds for e in h["error_samples"]][:5],
        "answered": sum(h["answered"] for h in holds),
        "polls": sum(h["polls"] for h in holds),
        "joined_s": joined_s,
        "held_s": args.hold_seconds,
        "answered_s": answered_s,
        "server_fds": fds,
        "server_rss_mb": rss_kb / 1024,
        "server_cpu_s": server.cpu_s,
        "load_cpu_s": sum(h["cpu_s"] for h in holds),
        "server_peak_threads": server.peak_threads,
        "load_start": load_start,
    }


def _share_parser(command: str) -> argparse.ArgumentParser:
    """The options of a load process: its share of the clients, the server, the summary."""
    parser = argparse.ArgumentParser(prog=f"load.py {command}")
    parser.add_argument("--server", required=True)
    parser.add_argument("--first-id", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--summary", type=Path, required=True)
    return parser


def swarm_main(argv: list[str]) -> int:
    """One load process: ``count`` clients as threads, ids from ``first-id``."""
    from fl_kubeflow.client.numpy_trainers import DeltaTrainer
    from fl_kubeflow.client.swarm import run_swarm

    parser = _share_parser("swarm")
    parser.add_argument("--params", type=int, required=True)
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


def hold_main(argv: list[str]) -> int:
    """One holding process: ``count`` clients join, then hold a model long-poll each on
    one thread (raw sockets, a selector), asking again after each 204, until every one
    has the round's model or ``timeout`` passes. Writes a summary and exits."""
    from fl_kubeflow.auth import auth_headers

    parser = _share_parser("hold")
    parser.add_argument("--wait", type=float, required=True)
    parser.add_argument("--held", type=Path, required=True, help="written once all hold")
    args = parser.parse_args(argv)
    host, port = args.server.removeprefix("http://").split(":")
    auth = "".join(f"{k}: {v}\r\n" for k, v in auth_headers(os.environ.get(TOKEN_ENV)).items())
    errors: list[str] = []
    selector = selectors.DefaultSelector()
    for i in range(args.first_id, args.first_id + args.count):
        conn = http.client.HTTPConnection(host, int(port), timeout=args.timeout)
        body = json.dumps({"client_id": str(i)})
        conn.request(
            "POST",
            "/v1/join",
            body=body,
            headers={
                "X-FL-Client-Id": str(i),
                "Content-Type": "application/json",
                **auth_headers(os.environ.get(TOKEN_ENV)),
            },
        )
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            errors.append(f"{i}: join {response.status}")
            continue
        poll = (
            f"GET /v1/model?round=1&wait={args.wait} HTTP/1.1\r\nHost: {host}\r\n"
            f"X-FL-Client-Id: {i}\r\n{auth}\r\n"
        ).encode()
        sock = conn.sock
        sock.sendall(poll)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, [poll, b""])
    args.held.write_text("held")
    answered = polls = 0
    deadline = time.monotonic() + args.timeout
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(1.0):
            poll, data = key.data
            chunk = key.fileobj.recv(1 << 16)
            if not chunk:
                errors.append("connection closed by the server")
                selector.unregister(key.fileobj)
                continue
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if not sep or len(body) < length:
                key.data[1] = data
                continue
            status = int(head.split(b" ", 2)[1])
            key.data[1] = b""
            polls += 1
            if status == 204 and b"connection: close" in head.lower():
                # waitress closes after a 204 (it has no Content-Length): a new connection.
                selector.unregister(key.fileobj)
                key.fileobj.close()
                sock = socket.create_connection((host, int(port)), timeout=args.timeout)
                sock.sendall(poll)
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, [poll, b""])
            elif status == 204:
                key.fileobj.sendall(poll)
            elif status == 200:
                answered += 1
                selector.unregister(key.fileobj)
                key.fileobj.close()
            else:
                errors.append(f"status {status}")
                selector.unregister(key.fileobj)
    errors += ["no answer"] * len(selector.get_map())
    args.summary.write_text(
        json.dumps(
            {
                "answered": answered,
                "polls": polls,
                "errors": len(errors),
                "error_samples": errors[:3],
                "cpu_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
            }
        )
    )
    return 0 if not errors else 1


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
    for r in [r for r in rows if r.get("kind", "run") == "run"]:
        lines.append(
            f"| {r['label']} | {r['params']:,} | {r['clients']:,} | {r['load_processes']} "
            f"| {r['rounds']} | {r['errors']} | {r['median_round_s']:.3f} "
            f"| {r['max_round_s']:.3f} | {r['wall_s']:.1f} | {r['server_cpu_s']:.1f} "
            f"| {r['load_cpu_s']:.1f} | {r['server_peak_threads']} "
            f"| {r['server_peak_rss_mb']:.0f} | {r['load_start']:.1f} | {r['when']} |"
        )
    lines += [
        "",
        "## Held connections",
        "",
        "`load.py --hold`: N clients join (from several processes, each holding its "
        "connections on one thread with a selector) and each holds a model long-poll "
        "(wait 20 s, asked again after each 204) while the round waits for one more "
        "client; after the hold that client joins, the round opens and every held poll "
        "must be answered with the model. Errors: any other status, a connection closed "
        "by the server, a poll unanswered. Server threads: the peak; fds and RSS: at the "
        "end of the hold.",
        "",
        "| label | P | clients | load procs | errors | answered | polls | join s | held s "
        "| all answered s | server threads | server fds | server RSS MB | server CPU s "
        "| load CPU s | load avg | when |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: | ---: | --- |",
    ]
    for r in [r for r in rows if r.get("kind") == "hold"]:
        lines.append(
            f"| {r['label']} | {r['params']:,} | {r['clients']:,} | {r['load_processes']} "
            f"| {r['errors']} | {r['answered']:,} | {r['polls']:,} | {r['joined_s']:.1f} "
            f"| {r['held_s']:.0f} | {r['answered_s']:.1f} | {r['server_peak_threads']} "
            f"| {r['server_fds']:,} | {r['server_rss_mb']:.0f} | {r['server_cpu_s']:.1f} "
            f"| {r['load_cpu_s']:.1f} | {r['load_start']:.1f} | {r['when']} |"
        )
    # Hand-written notes follow the tables, from their own heading on.
    text = path.read_text() if path.exists() else ""
    tail = text[text.index(NOTES) :] if NOTES in text else ""
    path.write_text("\n".join(lines) + "\n" + tail)


def _key(row: dict[str, Any]) -> tuple:
    """Rows of the same cell: a newer run replaces an older one."""
    return (
        row.get("kind", "run"),
        row["label"],
        row["params"],
        row["clients"],
        row["load_processes"],
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "swarm":
        return swarm_main(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "hold":
        return hold_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 200, 400, 1000])
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--load-processes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--label", default="now", help="names the server version measured")
    parser.add_argument("--profile", type=Path, help="run the server under py-spy into this file")
    parser.add_argument("--output", type=Path, default=HERE / "load.md")
    parser.add_argument(
        "--hold", action="store_true", help="clients only join and hold long-polls (hold_run)"
    )
    parser.add_argument("--hold-seconds", type=float, default=45.0)
    args = parser.parse_args()
    soft = raise_open_files(4 * max(args.clients) + 4096)
    print(f"open-file limit {soft}", flush=True)
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.clients:
            run = hold_run if args.hold else one_run
            row = run(args, n, Path(tmp) / f"n{n}")
            print(json.dumps(row), flush=True)
            failed = failed or row["errors"] > 0 or row.get("status", "finished") != "finished"
            rows = [r for r in rows if _key(r) != _key(row)]
            rows.append(row)
    rows.sort(key=lambda r: (r.get("kind", "run"), r["label"], r["params"], r["clients"]))
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
    write_markdown(rows, args.output)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
