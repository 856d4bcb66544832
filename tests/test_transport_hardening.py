"""The transport against strangers: slow and idle connections, unauthenticated bodies.

Real server processes on loopback, plain (waitress) and TLS (cheroot). A flood of
connections that trickle a request line or headers, sit silent, or never finish a TLS
handshake must not keep probes and an authenticated client from being answered
promptly; a refused request is answered from its headers, its body never read.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import ssl
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from fl_kubeflow import wire
from fl_kubeflow.auth import new_token
from tests.fl_processes import RawClient, ServerProcess, start_server
from tests.test_tls import make_certificates

# A request answered later than this is a server that stopped serving.
PROMPT = 5.0
FLOOD = 120
MODEL = {"w": np.arange(16, dtype=np.float32)}


class Flood:
    """Connections that never finish a request head, kept at ``count`` from a thread.

    Plain HTTP: a third trickle a request line a byte at a time, a third trickle
    headers, a third send nothing. TLS: half send nothing, half trickle the start of a
    TLS record. A connection the server closes is opened again at once, as an
    attacker would.
    """

    def __init__(self, port: int, count: int, tls: bool, trickle_every: float = 1.0) -> None:
        self.port = port
        self.kinds = ["silent", "record"] if tls else ["line", "headers", "silent"]
        self.count = count
        self.trickle_every = trickle_every
        self.opened = 0
        self.closed_by_server = 0
        self._sockets: dict[socket.socket, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flood:
        for number in range(self.count):
            self._open(self.kinds[number % len(self.kinds)])
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self._sockets:
            sock.close()

    def _open(self, kind: str) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        first = {
            "line": b"GET /v1/sta",
            "headers": b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: ",
            "record": b"\x16\x03\x01\x02",  # a TLS handshake record's header, unfinished
            "silent": b"",
        }[kind]
        sock.sendall(first)
        self._sockets[sock] = kind
        self.opened += 1

    def _run(self) -> None:
        while not self._stop.wait(self.trickle_every):
            closed = []
            readable, _, _ = select.select(list(self._sockets), [], [], 0)
            for sock in readable:
                try:
                    if not sock.recv(4096):
                        closed.append(sock)
                except OSError:
                    closed.append(sock)
            for sock, kind in self._sockets.items():
                if kind != "silent" and sock not in closed:
                    try:
                        sock.send(b"a")
                    except OSError:
                        closed.append(sock)
            for sock in closed:
                kind = self._sockets.pop(sock)
                sock.close()
                self.closed_by_server += 1
                with contextlib.suppress(OSError):  # not accepting: the test will say so
                    self._open(kind)


def _start(folder: Path, tls: bool, *args: str, **options) -> tuple[ServerProcess, str, object]:
    """A token-protected server; its base URL and what requests should verify it with."""
    extra: list[str] = []
    verify: object = True
    if tls:
        certs = make_certificates(folder / "certs")
        extra = ["--tls-cert", str(certs["server.crt"]), "--tls-key", str(certs["server.key"])]
        verify = str(certs["ca.crt"])
    server = start_server(folder / "server", *args, *extra, token=new_token(), **options)
    scheme = "https" if tls else "http"
    return server, f"{scheme}://127.0.0.1:{server.port}", verify


def _client(url: str, server: ServerProcess, verify: object) -> RawClient:
    session = requests.Session()
    session.verify = verify
    session.trust_env = False  # REQUESTS_CA_BUNDLE would replace ``verify``
    return RawClient(url, "a", session, {"Authorization": f"Bearer {server.token}"})


def _prompt(call, *args):
    """Run one request, and fail unless it was answered within PROMPT seconds."""
    started = time.monotonic()
    response = call(*args)
    took = time.monotonic() - started
    assert took < PROMPT, f"{call.__name__} took {took:.1f}s"
    return response


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_flood_of_unfinished_connections_leaves_the_server_to_probes_and_clients(tmp_path, tls):
    server, url, verify = _start(tmp_path, tls, "--clients", "1", "--rounds", "1")
    client = _client(url, server, verify)
    auth = client.headers
    try:
        with Flood(server.port, FLOOD, tls) as flood:
            health = _prompt(client.session.get, f"{url}/healthz")
            assert health.status_code == 200
            assert _prompt(client.join).status_code == 200
            assert _prompt(client.propose, MODEL).status_code == 201
            status = client.session.get(f"{url}/v1/status", headers=auth, timeout=PROMPT)
            assert status.status_code == 200
            answer = _prompt(client.model, 1, 2.0)
            assert answer.status_code == 200, answer.text
            plus_one = {"w": MODEL["w"] + 1}
            assert _prompt(client.update, 1, wire.encode(plus_one)).status_code == 200
            final = _prompt(client.model, 2, 2.0)
            assert final.headers["X-FL-Phase"] == "finished"
            _prompt(client.leave)
            assert flood.opened >= FLOOD
        assert server.wait(30) == 0, server.log()
        np.testing.assert_array_equal(server.final_weights()["w"], plus_one["w"])
        # Counted, not logged a line per connection.
        assert server.log().count("\n") < 30, server.log()
    finally:
        server.kill()


def _head(path: str, headers: dict[str, str], length: int) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer(sock: socket.socket) -> tuple[int, dict, dict]:
    """Status, headers and JSON body of one response read off ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"connection closed after {data!r}"
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        piece = sock.recv(65536)
        assert piece
        body += piece
    return int(lines[0].split()[1]), headers, json.loads(body)


def _connect(port: int, tls: bool, ca: object) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=PROMPT)
    if not tls:
        return sock
    context = ssl.create_default_context(cafile=str(ca))
    return context.wrap_socket(sock, server_hostname="localhost")


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _spooled_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_refusals_are_answered_from_the_headers_without_reading_the_body(tmp_path, tls):
    """20 unauthenticated 15 MiB updates are each answered 401 at once, holding neither
    memory nor spool; a stranger id gets 403, a round not open 409, an oversize body 413;
    the honest client's round still completes."""
    spool = tmp_path / "spool"
    spool.mkdir()
    server, url, verify = _start(
        tmp_path,
        tls,
        *("--clients", "1", "--rounds", "1", "--max-update-mb", "1"),
        env={"TMPDIR": str(spool)},
    )
    client = _client(url, server, verify)
    big = 15 * 1024 * 1024
    update = {"X-FL-Client-Id": "a", "X-FL-Round": "1", "X-FL-Num-Examples": "1"}
    token = client.headers
    try:
        assert client.join().status_code == 200
        assert client.propose(MODEL).status_code == 201
        rss_before = _rss_bytes(server.proc.pid)
        strangers = []
        for number in range(20):
            sock = _connect(server.port, tls, verify)
            wrong = {"Authorization": "Bearer nope"} if number % 2 else {}
            # The head and the first 64 KiB of a 15 MiB body, the rest never sent.
            sock.sendall(_head("/v1/update", {**update, **wrong}, big) + b"\0" * 65536)
            strangers.append(sock)
        for sock in strangers:
            status, headers, body = _answer(sock)
            assert (status, body["error"]) == (401, "unauthorized"), body
            assert headers["connection"] == "close"
        assert _rss_bytes(server.proc.pid) - rss_before < 20 * 1024 * 1024
        assert _spooled_bytes(spool) < 1024 * 1024
        for sock in strangers:
            sock.close()
        # With the token, on the headers alone: not joined, round not open, too large.
        for headers, length, expected in [
            ({**token, **update, "X-FL-Client-Id": "b"}, big, (403, "unknown_client")),
            ({**token, **update, "X-FL-Round": "7"}, 1000, (409, "wrong_round")),
            ({**token, **update}, 1024 * 1024 + 1, (413, "too_large")),
        ]:
            with _connect(server.port, tls, verify) as sock:
                sock.sendall(_head("/v1/update", headers, length))
                status, _, body = _answer(sock)
                assert (status, body["error"]) == expected, body
        assert client.model(1, 2.0).status_code == 200
        assert client.update(1, wire.encode({"w": MODEL["w"] * 2})).status_code == 200
        assert client.model(2, 2.0).headers["X-FL-Phase"] == "finished"
        client.leave()
        assert server.wait(30) == 0, server.log()
    finally:
        server.kill()


def test_the_body_limit_is_the_one_documented(tmp_path):
    """Bodies over --max-update-mb get 413 too_large in JSON: from the headers when they
    declare their length (nothing of them read), and as they arrive when chunked; a body
    of exactly the limit is read (and here refused as not a model)."""
    server, url, verify = _start(
        tmp_path, False, "--clients", "1", "--rounds", "1", "--max-update-mb", "0.01"
    )
    client = _client(url, server, verify)
    limit = int(0.01 * 1024 * 1024)
    headers = {**client.headers, "X-FL-Client-Id": "a", "X-FL-Round": "1"}
    try:
        assert client.join().status_code == 200
        with _connect(server.port, False, verify) as sock:
            sock.sendall(_head("/v1/initial", headers, limit + 1))
            status, _, body = _answer(sock)
            assert (status, body["error"]) == (413, "too_large"), body
        with _connect(server.port, False, verify) as sock:
            sock.sendall(_head("/v1/initial", headers, limit) + b"\1" * limit)
            status, _, body = _answer(sock)
            assert (status, body["error"]) == (400, "bad_request"), body
        chunked = requests.post(
            f"{url}/v1/initial",
            data=iter([b"\1" * limit, b"\1" * 100_000]),
            headers=headers,
            timeout=PROMPT,
        )
        assert (chunked.status_code, chunked.json()["error"]) == (413, "too_large")
        # A length of more digits than Python's int() takes (4300) is a malformed
        # length like any other, not an exception on the I/O thread.
        with _connect(server.port, False, verify) as sock:
            sock.sendall(_head("/v1/update", headers, 0).replace(b"0", b"9" * 5000, 1))
            assert sock.recv(100).startswith(b"HTTP/1.1 400"), "not a 400"
        assert requests.get(f"{url}/healthz", timeout=PROMPT).status_code == 200
        assert "uncaptured python exception" not in server.log()
    finally:
        server.kill()


def test_a_trickled_head_is_cut_at_its_deadline_and_a_long_poll_is_not(tmp_path):
    """--head-timeout runs from a head's first byte, not from each read: a connection
    sending a byte every 0.2 s is closed at it; an authenticated long-poll longer than
    it is a request in progress, answered in full."""
    server, url, verify = _start(
        tmp_path, False, "--clients", "2", "--rounds", "1", "--head-timeout", "1.5"
    )
    client = _client(url, server, verify)
    try:
        assert client.join().status_code == 200
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=PROMPT) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            with contextlib.suppress(OSError):
                while time.monotonic() - started < 2 * PROMPT:
                    sock.sendall(b"X")
                    if select.select([sock], [], [], 0.2)[0] and not sock.recv(4096):
                        break
        took = time.monotonic() - started
        assert 1.5 <= took < PROMPT, took
        poll = client.model(1, 3.0)  # no model yet: the poll is held 3 s, then 204
        assert poll.status_code == 204, poll.text
    finally:
        server.kill()
