"""The socket loops on epoll (server/event_loop.py) hold thousands of connections.

A real waitress server in this process (the federation, the app, the head check and
the guard as ``serve`` wires them), real sockets on loopback. waitress's own loop
asked every held connection readable()/writable() at every turn; the epoll loop asks
only those that may have changed, so these must hold: every held connection is still
served, rounds complete meanwhile, a response a worker finishes goes out at once
(its channel marked, not found by the safety-net rescan), and no rescan ever finds a
socket whose change nothing marked (``EpollLoop.missed``).
"""

from __future__ import annotations

import functools
import http.client
import json
import resource
import socket
import threading
import time

import pytest
from waitress import wasyncore

from fl_kubeflow import protocol, wire
from fl_kubeflow.client.numpy_trainers import DeltaTrainer, random_weights
from fl_kubeflow.client.swarm import run_swarm
from fl_kubeflow.server import event_loop
from fl_kubeflow.server.app import create_app
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.event_loop import HAS_EPOLL, RESCAN_EVERY, EpollLoop, InterestMap
from fl_kubeflow.server.federation import Federation
from fl_kubeflow.server.header_check import check_request_head
from fl_kubeflow.server.http_server import RunningServer, start_http_server
from fl_kubeflow.server.identity import identities_for
from fl_kubeflow.strategies import FedAvg

pytestmark = pytest.mark.skipif(not HAS_EPOLL, reason="epoll is Linux's")

HELD = 2000
REAL_CLIENTS = 8
SHAPES = [(16, 4), (4,)]


@pytest.fixture(autouse=True)
def open_files():
    """Descriptors for both ends of every held connection, in this one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * HELD + 512
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"open-file hard limit {hard} < {wanted}")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _serve(config: ServerConfig) -> tuple[Federation, RunningServer, threading.Thread]:
    """The federation behind its waitress server, wired as server/serve.py does."""
    initial = random_weights(SHAPES, seed=0)
    federation = Federation(config, FedAvg(), initial)
    identities = identities_for(config, on_revoke=federation.revoke)
    server = start_http_server(
        create_app(federation, config, identities),
        config,
        functools.partial(check_request_head, federation, identities),
        federation.count_rejection,
        on_failure=federation.abort,
        federation=federation,
    )
    driver = threading.Thread(target=federation.run, daemon=True)
    driver.start()
    return federation, server, driver


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length (what the server always sends);
    header names in lower case."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed by the server after {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("connection closed mid-body")
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _get(path: str, client_id: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: x\r\n{protocol.CLIENT_ID_HEADER}: {client_id}\r\n\r\n"
    ).encode()


def _join(client_id: str) -> bytes:
    body = json.dumps({"client_id": client_id}).encode()
    return (
        f"POST {protocol.JOIN_PATH} HTTP/1.1\r\nHost: x\r\n"
        f"{protocol.CLIENT_ID_HEADER}: {client_id}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _connect(port: int, requests: list[bytes]) -> list[socket.socket]:
    """A connection per request, each sent at once (as a client does: a connection
    with no request is a stranger's, and the guard sheds strangers beyond its cap)."""
    held = []
    for request in requests:
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        sock.sendall(request)
        held.append(sock)
    return held


def _assert_nothing_missed(server: RunningServer) -> None:
    assert server.event_loops, "the server's loops are not on epoll"
    assert [loop.missed for loop in server.event_loops] == [0] * len(server.event_loops)


def test_thousands_of_idle_connections_are_held_while_rounds_complete():
    """2,000 keep-alive connections (each made one /v1 request, then idles) stay open and
    served while 8 real clients complete 3 rounds; then each is answered again."""
    config = ServerConfig(
        num_clients=REAL_CLIENTS,
        num_rounds=3,
        host="127.0.0.1",
        port=0,
        io_threads=2,
        # The held connections are not the run's clients: room for them in the cap.
        max_pending_connections=HELD + 64,
        join_timeout=120.0,
        round_timeout=120.0,
    )
    federation, server, driver = _serve(config)
    started = time.monotonic()
    held = _connect(server.port, [_get(protocol.STATUS_PATH, f"idle-{n}") for n in range(HELD)])
    try:
        for sock in held:
            assert _read_response(sock)[0] == 200
        held_s = time.monotonic() - started
        result = run_swarm(
            f"http://127.0.0.1:{server.port}",
            REAL_CLIENTS,
            lambda i: DeltaTrainer(SHAPES, delta=1.0),
            timeout=120,
        )
        assert result.errors == {}
        assert len(result.summaries) == REAL_CLIENTS
        driver.join(60)
        assert federation.phase == "finished", federation.error
        assert [r["round"] for r in federation.history()["rounds"]] == [0, 1, 2, 3]
        # Every held connection is still open and served (waitress's loop would be too,
        # but paying for all 2,000 at each of these requests' turns).
        for number, sock in enumerate(held):
            sock.sendall(_get(protocol.STATUS_PATH, f"idle-{number}"))
        for sock in held:
            status, _, body = _read_response(sock)
            assert status == 200 and json.loads(body)["phase"] == "finished"
        _assert_nothing_missed(server)
        assert held_s < 60
    finally:
        for sock in held:
            sock.close()
        server.close()


def test_every_parked_long_poll_of_thousands_is_answered():
    """2,000 clients join and hold model long-polls (parked: no thread); when the last
    client joins, the round opens and every held poll gets the model."""
    config = ServerConfig(
        num_clients=HELD + 1,
        num_rounds=1,
        host="127.0.0.1",
        port=0,
        io_threads=2,
        join_timeout=120.0,
    )
    federation, server, _ = _serve(config)
    held = _connect(server.port, [_join(str(number)) for number in range(HELD)])
    try:
        for sock in held:
            assert _read_response(sock)[0] == 200
        for number, sock in enumerate(held):
            sock.sendall(_get(f"{protocol.MODEL_PATH}?round=1&wait=60", str(number)))
        deadline = time.monotonic() + 30
        while server.parker.parked() < HELD and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.parker.parked() == HELD
        opener = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        opener.request(
            "POST",
            protocol.JOIN_PATH,
            body=json.dumps({"client_id": "opener"}),
            headers={protocol.CLIENT_ID_HEADER: "opener", "Content-Type": "application/json"},
        )
        assert opener.getresponse().status == 200
        for sock in held:
            status, headers, body = _read_response(sock)
            assert status == 200 and headers["x-fl-round"] == "1"
            assert [tuple(v.shape) for v in wire.decode(body).values()] == SHAPES
        _assert_nothing_missed(server)
    finally:
        for sock in held:
            sock.close()
        server.close()
        federation.abort("test over")


def _slow_hello(environ, start_response):
    time.sleep(0.05)  # the response is written on a worker thread, later
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def test_a_response_a_worker_finishes_goes_out_at_once():
    """A channel whose only change is on a worker thread is marked: its response is sent
    when ready, not at the next rescan (RESCAN_EVERY) or the loop's wait timeout."""
    config = ServerConfig(num_clients=4, num_rounds=1, host="127.0.0.1", port=0, io_threads=1)
    server = start_http_server(_slow_hello, config)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        slowest = 0.0
        for _ in range(20):
            started = time.monotonic()
            conn.request("GET", "/")
            response = conn.getresponse()
            assert response.read() == b"hello"
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 0.05 + RESCAN_EVERY / 4, slowest
        _assert_nothing_missed(server)
    finally:
        server.close()


class _Idle(wasyncore.dispatcher):
    """A marking channel whose read interest the test switches (no data ever comes)."""

    marks_interest_changes = True

    def __init__(self, sock: socket.socket, map: InterestMap) -> None:
        super().__init__(sock, map=map)
        self.wants_read = False

    def readable(self) -> bool:
        return self.wants_read

    def writable(self) -> bool:
        return False

    def polled_each_turn(self) -> bool:
        return False


@pytest.mark.parametrize("marked", [True, False])
def test_a_rescan_counts_a_change_as_missed_only_if_nothing_marked_it(monkeypatch, marked):
    """A change marked just before a rescan turn (its mark taken by that turn) is not a
    miss; the same change with no mark is, once the next rescan finds none came."""
    monkeypatch.setattr(event_loop, "RESCAN_EVERY", 0.0)  # every turn rescans
    ours, theirs = socket.socketpair()
    interest = InterestMap()
    channel = _Idle(ours, interest)
    loop = EpollLoop(interest, wake=lambda: None)
    try:
        loop.turn()  # registered, wanting nothing
        channel.wants_read = True
        if marked:
            interest.changed(ours.fileno())
        loop.turn()  # the rescan finds the new interest
        loop.turn()  # the next one settles whether a mark came
        assert loop.missed == (0 if marked else 1)
    finally:
        channel.close()
        theirs.close()
