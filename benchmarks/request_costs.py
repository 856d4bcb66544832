"""Where a small-model client-round's time goes: CPU per request, piece by piece.

At P = 100k a round is fixed overhead, not bytes. This measures, in CPU seconds (so
that other work on the machine inflates it less than wall time):

1. a whole run (round_overhead.py's server and N client processes): the server's and
   the clients' CPU per round, from /usr/bin/time and this process's children, as the
   difference of a long and a short run (start-up cancels out);
2. one trivial request (GET /healthz on a keep-alive connection) through the real
   server process, and the same request through the Flask app alone (a WSGI call in
   this process): waitress's share (parsing, the I/O thread's hand-off to a worker
   and back, the socket calls) is the difference;
3. the update's own work in the server, in this process: decode, signature and
   finiteness check, resend digest, fold into the sum;
4. the client side of one request: through the client's Transport (urllib3) against
   the raw http.client, both on /healthz;
5. a thread hand-off: a waiting thread woken by Condition.notify (the long-poll's and
   waitress's task queue's mechanism), wall time from notify to running.

    flock /work/wt/bench.lock .venv/bin/python benchmarks/request_costs.py --params 100000
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import round_overhead
from perf_common import HERE, load_average, model_shapes, processes, start_server

REQUESTS = 2000


def cpu_per_call(fn: Callable[[], object], count: int) -> float:
    """This process's CPU seconds per call of ``fn``, after a warm-up."""
    for _ in range(min(50, count)):
        fn()
    started = time.process_time()
    for _ in range(count):
        fn()
    return (time.process_time() - started) / count


def whole_run(num_params: int, num_clients: int, rounds: int, base: Path) -> dict[str, float]:
    """Server and client CPU per round, and the median round, from two runs' difference."""

    def one(count: int, folder: Path) -> tuple[float, float, float]:
        timing = folder / "server-time.txt"
        before = os.times()
        prefix = ["/usr/bin/time", "-f", "%U %S", "-o", str(timing)]
        row = round_overhead.run_one(num_params, num_clients, folder, count, prefix=prefix)
        after = os.times()
        user, system = map(float, timing.read_text().split()[-2:])
        children = (after.children_user - before.children_user) + (
            after.children_system - before.children_system
        )
        return user + system, children - (user + system), row["median_round_s"]

    short = one(5, base / "short")
    long = one(5 + rounds, base / "long")
    return {
        "server_cpu_s": (long[0] - short[0]) / rounds,
        "clients_cpu_s": (long[1] - short[1]) / rounds,
        "median_round_s": long[2],
    }


def trivial_requests(base: Path) -> dict[str, float]:
    """One /healthz request: server CPU through the real server, and Flask's alone."""
    from werkzeug.test import EnvironBuilder

    from fl_kubeflow.client.transport import Transport
    from fl_kubeflow.server.app import create_app
    from fl_kubeflow.server.config import ServerConfig
    from fl_kubeflow.server.federation import Federation
    from fl_kubeflow.strategies import FedAvg

    out: dict[str, float] = {}
    with processes(base) as procs:
        url = start_server(procs, base, 1, 1, "--join-timeout", "600")
        server_pid = procs.procs[-1][1].pid
        host, port = url.removeprefix("http://").split(":")

        def server_cpu() -> float:
            fields = Path(f"/proc/{server_pid}/stat").read_text().split()
            return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")

        connection = http.client.HTTPConnection(host, int(port))

        def raw() -> None:
            connection.request("GET", "/healthz")
            connection.getresponse().read()

        started = server_cpu()
        out["client_raw_s"] = cpu_per_call(raw, REQUESTS)
        out["server_request_s"] = (server_cpu() - started) / (REQUESTS + 50)
        transport = Transport(url)
        out["client_transport_s"] = cpu_per_call(lambda: transport.request("GET", "/healthz"), 500)
        transport.close()
        connection.close()
    config = ServerConfig(num_clients=1, num_rounds=1)
    app = create_app(Federation(config, FedAvg()), config)
    environ = EnvironBuilder(path="/healthz").get_environ()

    def wsgi() -> None:
        b"".join(app(dict(environ), lambda status, headers, exc=None: None))

    out["flask_request_s"] = cpu_per_call(wsgi, REQUESTS)
    return out


def update_work(num_params: int) -> dict[str, float]:
    """The server's work on one update, in this process."""
    from fl_kubeflow import wire
    from fl_kubeflow.client.numpy_trainers import random_weights
    from fl_kubeflow.server import updates
    from fl_kubeflow.strategies import FedAvg

    weights = random_weights(model_shapes(num_params), seed=0)
    body = memoryview(np.frombuffer(wire.encode(weights), np.uint8).copy())
    signature = wire.describe(weights)
    decoded = updates.decode(body, 1 << 31, "float32")
    aggregator = FedAvg().start_round(1, weights)
    return {
        "decode_s": cpu_per_call(lambda: updates.decode(body, 1 << 31, "float32"), 300),
        "check_s": cpu_per_call(
            lambda: updates.check_signature(decoded, signature, what="update"), 300
        ),
        "digest_s": cpu_per_call(lambda: updates.digest(body), 300),
        "fold_s": cpu_per_call(lambda: aggregator.add(decoded, 1, "a"), 300),
        "encode_s": cpu_per_call(lambda: wire.encode_parts(weights), 300),
    }


def hand_off(count: int = 2000) -> float:
    """Median wall seconds from Condition.notify to the waiting thread running."""
    cond = threading.Condition()
    state = {"go": 0, "sent": 0.0}
    woken: list[float] = []

    def waiter() -> None:
        with cond:
            for number in range(1, count + 1):
                while state["go"] < number:
                    cond.wait()
                woken.append(time.perf_counter() - state["sent"])
                cond.notify_all()

    thread = threading.Thread(target=waiter)
    thread.start()
    for number in range(1, count + 1):
        with cond:
            state["go"], state["sent"] = number, time.perf_counter()
            cond.notify_all()
            while len(woken) < number:
                cond.wait()
    thread.join()
    return statistics.median(woken)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result: dict[str, Any] = {"params": args.params, "clients": args.clients}
    result["load_before"] = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        result.update(whole_run(args.params, args.clients, args.rounds, base / "run"))
        result.update(trivial_requests(base / "trivial"))
    result.update(update_work(args.params))
    result["hand_off_s"] = hand_off()
    result["load_after"] = load_average()
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(main())
