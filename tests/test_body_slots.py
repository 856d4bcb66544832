"""Large bodies received straight into memory, a few at a time, by the real waitress server."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from fl_kubeflow.server.body_slots import (
    OWN_ARRAY_BODIES_FROM,
    SLOT_BODIES_FROM,
    BodyArrays,
    ReceivedBody,
    ReceiveSlots,
)
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.http_server import RunningServer, start_http_server

BIG = 3 * SLOT_BODIES_FROM + 12345


class DigestApp:
    """Answers '<sha256> <how the body came>'; holds each request 0.2 s, counting slot bodies."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_memory = self.most_in_memory = 0

    def __call__(self, environ, start_response):
        source = environ["wsgi.input"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        in_memory = isinstance(source, ReceivedBody)
        body = bytes(source.take_array()) if in_memory else source.read(length)
        with self.lock:
            self.in_memory += in_memory
            self.most_in_memory = max(self.most_in_memory, self.in_memory)
        time.sleep(0.2)
        with self.lock:
            self.in_memory -= in_memory
        answer = f"{hashlib.sha256(body).hexdigest()} {'memory' if in_memory else 'buffer'}"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [answer.encode()]


def _serve(app, **options) -> RunningServer:
    config = ServerConfig(num_clients=8, num_rounds=1, host="127.0.0.1", port=0, **options)
    return start_http_server(app, config)


@pytest.fixture(autouse=True)
def _io_threads_end():
    """Each test's socket loops end with it (they notice the close within a second)."""
    yield
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
        t.name.startswith("waitress-io-") for t in threading.enumerate()
    ):
        time.sleep(0.05)


def _post(port: int, body: bytes) -> tuple[str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/", body=body)
        response = conn.getresponse()
        assert response.status == 200, response.read()
        digest, how = response.read().decode().split()
        return digest, how
    finally:
        conn.close()


def _wait_for_free(server: RunningServer, free: int) -> None:
    deadline = time.monotonic() + 10
    while server.receive_slots.free != free and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.receive_slots.free == free


def _read_response(stream) -> tuple[int, bytes]:
    status = int(stream.readline().split()[1])
    length = 0
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return status, stream.read(length)


def test_concurrent_uploads_are_received_into_memory_two_at_a_time():
    app = DigestApp()
    server = _serve(app, io_threads=2, receive_slots=2)
    try:
        bodies = [os.urandom(BIG) for _ in range(6)] + [os.urandom(1000), b""]
        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda b: _post(server.port, b), bodies))
        expected = [hashlib.sha256(b).hexdigest() for b in bodies]
        assert [digest for digest, _ in answers] == expected
        # Every large body waited for a slot rather than being spooled ...
        assert [how for _, how in answers] == ["memory"] * 6 + ["buffer"] * 2
        # ... and no more than two were held at once.
        assert app.most_in_memory == 2
        _wait_for_free(server, 2)
    finally:
        server.close()


def test_bodies_waitress_keeps_in_memory_get_arrays_of_their_own_with_no_slot():
    app = DigestApp()
    server = _serve(app, io_threads=2, receive_slots=1)
    try:
        in_memory_limit = 512 * 1024  # waitress's inbuf_overflow
        own = [os.urandom(n) for n in (OWN_ARRAY_BODIES_FROM, 400_000, in_memory_limit)] * 2
        usual = [os.urandom(OWN_ARRAY_BODIES_FROM - 1), os.urandom(in_memory_limit + 1)]
        bodies = own + usual
        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda b: _post(server.port, b), bodies))
        assert [digest for digest, _ in answers] == [hashlib.sha256(b).hexdigest() for b in bodies]
        assert [how for _, how in answers] == ["memory"] * len(own) + ["buffer"] * 2
        # With one slot: not one at a time, and the slot was never taken.
        assert app.most_in_memory > 1
        assert server.receive_slots.free == 1
    finally:
        server.close()


def test_without_slots_every_body_is_waitress_s_own():
    server = _serve(DigestApp(), receive_slots=0)
    try:
        body = os.urandom(400_000)
        assert _post(server.port, body) == (hashlib.sha256(body).hexdigest(), "buffer")
    finally:
        server.close()


def test_pipelined_requests_after_an_own_array_body_are_all_answered():
    server = _serve(DigestApp())
    first, second = os.urandom(300_000), os.urandom(OWN_ARRAY_BODIES_FROM)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        try:
            sock.sendall(
                b"".join(
                    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(b) + b
                    for b in (first, second, b"end")
                )
            )
            stream = sock.makefile("rb")
            answers = [_read_response(stream) for _ in range(3)]
        finally:
            server.close()
    assert answers == [
        (200, f"{hashlib.sha256(first).hexdigest()} memory".encode()),
        (200, f"{hashlib.sha256(second).hexdigest()} memory".encode()),
        (200, f"{hashlib.sha256(b'end').hexdigest()} buffer".encode()),
    ]


def test_a_stalled_upload_holding_the_slot_delays_others_by_the_patience_at_most():
    app = DigestApp()
    server = _serve(app, receive_slots=1, slot_patience=0.3)
    stalled = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        stalled.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % BIG + b"s" * 100_000
        )
        _wait_for_free(server, 0)
        body = os.urandom(BIG)
        started = time.monotonic()
        digest, how = _post(server.port, body)
        assert digest == hashlib.sha256(body).hexdigest()
        assert how == "buffer"  # spooled once it gave up waiting
        # patience + waitress's 1 s select timeout + the app's 0.2 s, with room
        assert time.monotonic() - started < 5
        # The client going away mid-body gives its slot back.
        stalled.close()
        _wait_for_free(server, 1)
        assert _post(server.port, body) == (digest, "memory")
    finally:
        stalled.close()
        server.close()


def test_a_body_over_max_update_bytes_is_not_received_into_memory():
    server = _serve(DigestApp(), max_update_bytes=2 * SLOT_BODIES_FROM)
    try:
        # Over the limit but within the server's slack for chunk framing (a bare app
        # has no head check to refuse it first).
        body = os.urandom(2 * SLOT_BODIES_FROM + 12345)
        assert _post(server.port, body) == (hashlib.sha256(body).hexdigest(), "buffer")
        small_enough = os.urandom(2 * SLOT_BODIES_FROM)
        assert _post(server.port, small_enough)[1] == "memory"
    finally:
        server.close()


def test_pipelined_requests_after_a_slot_body_are_all_answered():
    server = _serve(DigestApp())
    first, second = os.urandom(BIG), b"small"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        try:
            sock.sendall(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(first)
                + first
                + b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(second)
                + second
            )
            stream = sock.makefile("rb")
            answers = [_read_response(stream), _read_response(stream)]
        finally:
            server.close()
    assert answers == [
        (200, f"{hashlib.sha256(first).hexdigest()} memory".encode()),
        (200, f"{hashlib.sha256(second).hexdigest()} buffer".encode()),
    ]


def test_a_body_too_large_for_the_server_takes_no_slot():
    server = _serve(DigestApp(), max_update_bytes=1024)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n")
            status, _ = _read_response(sock.makefile("rb"))
        assert status == 413
        assert server.receive_slots.free == 2
    finally:
        server.close()


def test_slots_are_taken_given_back_and_given_up_on():
    slots = ReceiveSlots(2, patience=0.2)
    first, second = slots.take(10), slots.take(10)
    assert first is not None and second is not None and slots.free == 0
    assert slots.take(10) is None
    waiting_since = time.monotonic()
    assert not slots.given_up(waiting_since)
    time.sleep(0.3)
    assert slots.given_up(waiting_since)
    slots.give_back()
    # A slot freed just now restarts the patience of every body still waiting.
    assert not slots.given_up(waiting_since)
    assert slots.free == 1 and slots.take(10) is not None
    with pytest.raises(ValueError, match="slots must be >= 1, got 0"):
        ReceiveSlots(0, patience=1.0)


def test_body_arrays_are_reused_once_let_go_and_kept_in_bounded_number():
    arrays = BodyArrays(keep=2)
    first = arrays.get(3_000_000)
    first_base = id(first.base)  # an id: holding the base would keep it from reuse
    second = arrays.get(3_000_000)
    assert id(second.base) != first_base  # first is still held
    del first
    again = arrays.get(2_900_000)  # a few bytes' difference still fits
    assert id(again.base) == first_base and len(again) == 2_900_000
    del again, second
    # A body taken from its wsgi.input frees the array once the taker lets go, even
    # while waitress still holds the request (and so the input).
    held_input = ReceivedBody(arrays.get(3_000_000))
    taken_base = id(held_input.array.base)
    taken = held_input.take_array()
    assert held_input.array is None and held_input.read() == b""
    del taken
    assert id(arrays.get(3_000_000).base) == taken_base
    with pytest.raises(ValueError, match="taken already"):
        held_input.take_array()
    # Bodies of ever new sizes do not pile up kept arrays.
    for size in range(4 << 20, 40 << 20, 4 << 20):
        arrays.get(size)
    assert len(arrays._kept) == 2
    assert max(len(array) for array in arrays._kept) >= 36 << 20


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"receive_slots": -1}, "receive_slots must be between 0 and 64, got -1"),
        ({"slot_patience": 0}, "slot_patience must be positive, got 0"),
    ],
)
def test_bad_slot_settings_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        ServerConfig(num_clients=1, num_rounds=1, **options)
