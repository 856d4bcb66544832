"""The floor of a round on this machine: the same bytes and arithmetic, no HTTP.

A small-model round is fixed overhead, not bytes (results.md, "Small-model latency").
This measures how low a round can go here with what any Python server and Python
clients must do: one server process and N client processes on loopback, each round
the model (P float32) sent to every client, each client adding a delta to it (a new
array, as ``DeltaTrainer`` does) and sending it back, the server folding each update
into the float64 sum as it completes (the server's own ``WeightedSum``) and dividing
the mean into the next model. No HTTP, no framework, no threads: one selectors loop,
length-prefixed frames on persistent connections, every buffer reused. Anything the
real server does beyond this (parsing, routing, authentication, checks, the resend
digest, thread hand-offs, history) is on top of this floor.

    .venv/bin/python benchmarks/round_floor.py --params 100000 --clients 8 --rounds 200

``client`` is this module's own client process.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from perf_common import PYTHON, load_average

from fl_kubeflow.strategies.fedavg import WeightedSum

if TYPE_CHECKING:
    from flask import Flask

DELTA = np.float32(0.001)
OVER = {
    "sockets": "length-prefixed frames, one selectors loop (the floor)",
    "waitress": "HTTP/1.1 on bare waitress, a WSGI app of 30 lines, http.client clients",
    "flask": "the same app as two Flask routes, on bare waitress",
    "fl-kubeflow": "fl-kubeflow server and clients (round_overhead.py)",
}
FRAME = struct.Struct("!Q")  # body length, then the float32 body
# Longest a round may take in any of the ways: a client that died or hung fails the run.
ROUND_TIMEOUT = 60.0


def recv_exactly(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        count = sock.recv_into(view[got:])
        if count == 0:
            raise ConnectionError("server closed")
        got += count


def client(port: int, num_params: int, rounds: int) -> int:
    """Receive the model, add the delta, send it back; ``rounds`` times."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    header = bytearray(FRAME.size)
    model = np.empty(num_params, np.float32)
    body = memoryview(model).cast("B")
    for _ in range(rounds):
        recv_exactly(sock, memoryview(header))
        (length,) = FRAME.unpack(header)
        assert length == body.nbytes, length
        recv_exactly(sock, body)
        update = model + DELTA  # the stand-in for training: a new array
        sock.sendall(FRAME.pack(update.nbytes))
        sock.sendall(memoryview(update).cast("B"))
    sock.close()
    return 0


class Peer:
    """One client connection: what is left to send to it and where its update lands."""

    def __init__(self, sock: socket.socket, num_params: int) -> None:
        self.sock = sock
        self.update = np.empty(num_params, np.float32)
        self.inbox = memoryview(bytearray(FRAME.size))
        self.incoming = memoryview(self.update).cast("B")
        self.outgoing: list[memoryview] = []
        self.received = 0

    def reset(self, frame: memoryview, model: memoryview) -> None:
        self.outgoing = [frame, model]
        self.received = 0


def serve(listener: socket.socket, num_params: int, num_clients: int, rounds: int) -> dict:
    """Run ``rounds`` rounds with every client; return the rounds' times and CPU."""
    peers = []
    for _ in range(num_clients):
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        peers.append(Peer(sock, num_params))
    model = np.zeros(num_params, np.float32)
    frame = memoryview(FRAME.pack(model.nbytes))
    total = FRAME.size + model.nbytes
    selector = selectors.DefaultSelector()
    durations: list[float] = []
    cpu_started = time.process_time()
    for _ in range(rounds):
        started = time.perf_counter()
        total_sum = WeightedSum()
        for peer in peers:
            peer.reset(frame, memoryview(model).cast("B"))
            selector.register(peer.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, peer)
        pending = num_clients
        deadline = time.monotonic() + ROUND_TIMEOUT
        while pending:
            ready = selector.select(timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"no round within {ROUND_TIMEOUT:g}s: a client hung")
            for key, events in ready:
                peer = key.data
                if events & selectors.EVENT_WRITE and peer.outgoing:
                    sent = peer.sock.send(peer.outgoing[0])
                    peer.outgoing[0] = peer.outgoing[0][sent:]
                    if not len(peer.outgoing[0]):
                        peer.outgoing.pop(0)
                    if not peer.outgoing:
                        selector.modify(peer.sock, selectors.EVENT_READ, peer)
                if events & selectors.EVENT_READ:
                    at = peer.received
                    target = (
                        peer.inbox[at:] if at < FRAME.size else peer.incoming[at - FRAME.size :]
                    )
                    count = peer.sock.recv_into(target)
                    if count == 0:
                        raise ConnectionError("a client closed")
                    peer.received += count
                    if peer.received == total:
                        total_sum.add({"w": peer.update}, 1)
                        selector.unregister(peer.sock)
                        pending -= 1
        model = total_sum.result_into({"w": model})["w"]
        durations.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu_started
    for peer in peers:
        peer.sock.close()
    return {"durations": durations, "server_cpu_s": cpu}


def http_client(port: int, num_params: int, rounds: int) -> int:
    """The same client over HTTP/1.1 keep-alive (http.client): each round's update is
    POSTed and answered with the next model."""
    connection = http.client.HTTPConnection("127.0.0.1", port)
    connection.request("GET", "/model")
    model = np.frombuffer(connection.getresponse().read(), np.float32)
    for _ in range(rounds):
        update = model + DELTA
        connection.request("POST", "/update", body=memoryview(update).cast("B"))
        model = np.frombuffer(connection.getresponse().read(), np.float32)
        assert model.size == num_params, model.size
    connection.close()
    return 0


class BarrierApp:
    """A bare WSGI app on waitress: fold each POSTed update, answer it with the next
    model once every client's update of the round is in (what the real server's
    ``POST /v1/update?next=1`` does, without routing, checks or records)."""

    def __init__(self, num_params: int, num_clients: int, rounds: int) -> None:
        self.num_clients, self.rounds = num_clients, rounds
        self.model = np.zeros(num_params, np.float32).tobytes()
        self.condition = threading.Condition()
        self.round, self.pending = 0, num_clients
        self.sum = WeightedSum()
        self.finished_at: list[float] = []
        self.done = threading.Event()

    def __call__(self, environ: dict, start_response: Callable[..., object]) -> list[bytes]:
        if environ["REQUEST_METHOD"] == "POST":
            length = int(environ["CONTENT_LENGTH"])
            self.fold(environ["wsgi.input"].read(length))
        model = self.model
        start_response(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(model)))],
        )
        return [model]

    def flask_app(self) -> Flask:
        """The same two routes in Flask."""
        from flask import Flask, Response, request

        app = Flask(__name__)

        @app.get("/model")
        def model() -> Response:
            return Response(self.model, mimetype="application/octet-stream")

        @app.post("/update")
        def update() -> Response:
            self.fold(request.stream.read(request.content_length or 0))
            return Response(self.model, mimetype="application/octet-stream")

        return app

    def fold(self, body: bytes) -> None:
        """Add an update; return once the round it belongs to is over."""
        self.sum.add({"w": np.frombuffer(body, np.float32)}, 1)
        with self.condition:
            server_round = self.round
            self.pending -= 1
            if self.pending == 0:
                mean = self.sum.result()["w"]
                self.model, self.sum = mean.tobytes(), WeightedSum()
                self.finished_at.append(time.perf_counter())
                self.round, self.pending = self.round + 1, self.num_clients
                self.condition.notify_all()
                if self.round == self.rounds:
                    self.done.set()
            if not self.condition.wait_for(lambda: self.round != server_round, ROUND_TIMEOUT):
                raise TimeoutError(f"no round within {ROUND_TIMEOUT:g}s: a client hung")


def serve_waitress(
    port_holder: list,
    num_params: int,
    num_clients: int,
    rounds: int,
    clients_done: threading.Event,
    flask: bool,
) -> dict:
    from waitress import create_server

    barrier = BarrierApp(num_params, num_clients, rounds)
    app = barrier.flask_app() if flask else barrier
    # As the real server: one socket loop, a worker per waiting client and some over,
    # 256 KiB reads.
    server = create_server(
        app, host="127.0.0.1", port=0, threads=num_clients + 4, recv_bytes=256 * 1024
    )
    port_holder.append(server.effective_port)
    cpu_started = time.process_time()
    loop = threading.Thread(target=server.run, daemon=True)
    loop.start()
    finished = barrier.done.wait(rounds * ROUND_TIMEOUT)
    cpu = time.process_time() - cpu_started
    if not finished:
        server.close()
        raise TimeoutError(f"{rounds} rounds not done within {rounds * ROUND_TIMEOUT:g}s")
    clients_done.wait(ROUND_TIMEOUT)  # their last answers are still being sent
    server.close()
    ends = barrier.finished_at
    return {"durations": [b - a for a, b in itertools.pairwise(ends)], "server_cpu_s": cpu}


def row(
    over: str,
    num_params: int,
    num_clients: int,
    rounds: int,
    durations: list[float],
    server_cpu_s: float | None = None,
    clients_cpu_s: float | None = None,
) -> dict:
    """One way's result line; the first round is left out (it pays for the clients' start)."""
    kept = durations[1:]
    return {
        "over": over,
        "params": num_params,
        "clients": num_clients,
        "rounds": rounds,
        "median_round_s": statistics.median(kept),
        "best_round_s": min(kept),
        "server_cpu_per_round_s": None if server_cpu_s is None else server_cpu_s / rounds,
        # Children's CPU includes their start (imports): an upper bound per round.
        "clients_cpu_per_round_s": None if clients_cpu_s is None else clients_cpu_s / rounds,
    }


def run_server(num_params: int, num_clients: int, rounds: int) -> dict:
    """The real thing for comparison: round_overhead.py's run (``fl-kubeflow server``);
    its CPU is request_costs.py's to measure."""
    import tempfile
    from pathlib import Path

    import round_overhead

    with tempfile.TemporaryDirectory(prefix="round-floor-") as folder:
        result = round_overhead.run_one(num_params, num_clients, Path(folder), rounds=rounds)
    return row("fl-kubeflow", num_params, num_clients, rounds, result["round_s"])


def start_clients(role: str, port: int, num_params: int, num_clients: int, rounds: int) -> list:
    """This module's client processes (``client`` or ``http-client``)."""
    return [
        subprocess.Popen([PYTHON, __file__, role, str(port), str(num_params), str(rounds)])
        for _ in range(num_clients)
    ]


def wait_for(clients: list) -> None:
    for proc in clients:
        proc.wait(timeout=ROUND_TIMEOUT)


def run_sockets(num_params: int, num_clients: int, rounds: int) -> dict:
    listener = socket.create_server(("127.0.0.1", 0), backlog=num_clients)
    clients = start_clients("client", listener.getsockname()[1], num_params, num_clients, rounds)
    try:
        return serve(listener, num_params, num_clients, rounds)
    finally:
        listener.close()
        wait_for(clients)


def run_waitress(num_params: int, num_clients: int, rounds: int, flask: bool) -> dict:
    ports: list[int] = []
    result: dict = {}
    clients_done = threading.Event()
    thread = threading.Thread(
        target=lambda: result.update(
            serve_waitress(ports, num_params, num_clients, rounds, clients_done, flask)
        )
    )
    thread.start()
    started = time.monotonic()
    while not ports:
        if not thread.is_alive() or time.monotonic() - started > ROUND_TIMEOUT:
            raise RuntimeError("the waitress server did not start")
        time.sleep(0.01)
    try:
        wait_for(start_clients("http-client", ports[0], num_params, num_clients, rounds))
    finally:
        clients_done.set()
    thread.join(rounds * ROUND_TIMEOUT)
    if not result:
        raise RuntimeError("the waitress run did not finish (its error is above)")
    return result


def run(num_params: int, num_clients: int, rounds: int, over: str = "sockets") -> dict:
    if over == "fl-kubeflow":
        return run_server(num_params, num_clients, rounds)
    before = os.times()
    if over == "sockets":
        served = run_sockets(num_params, num_clients, rounds)
    else:
        served = run_waitress(num_params, num_clients, rounds, flask=over == "flask")
    after = os.times()
    clients_cpu = (after.children_user + after.children_system) - (
        before.children_user + before.children_system
    )
    return row(
        over,
        num_params,
        num_clients,
        rounds,
        served["durations"],
        served["server_cpu_s"],
        clients_cpu,
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        return client(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    if len(sys.argv) > 1 and sys.argv[1] == "http-client":
        return http_client(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--over",
        nargs="+",
        default=list(OVER),
        choices=list(OVER),
        help="what to run: " + "; ".join(f"{name}: {what}" for name, what in OVER.items()),
    )
    args = parser.parse_args()
    for _ in range(args.repeat):
        for over in args.over:
            result = run(args.params, args.clients, args.rounds, over)
            result["load"] = load_average()
            print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
