"""The client's copy-free transfers: bodies read into one buffer, updates sent from the tensors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from fl_kubeflow import wire
from fl_kubeflow.client.transport import BufferBody, ServerUnreachable, Transport

BODY = bytes(range(256)) * 4001  # not a multiple of the read piece size


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as waitress answers
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.connections.add(self.client_address)
        self.server.gets += 1
        truncate = self.server.gets <= self.server.truncate_first
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        if truncate:  # promise the whole body, send a tenth, hang up
            self.wfile.write(BODY[: len(BODY) // 10])
            self.close_connection = True
            return
        self.wfile.write(BODY)

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.server.received.append(
            (self.rfile.read(length), self.headers.get("Transfer-Encoding"))
        )
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    connections: set
    gets: int
    truncate_first: int
    received: list


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.connections, httpd.gets, httpd.truncate_first, httpd.received = set(), 0, 0, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _transport(server: _Server, retry_timeout: float = 5.0) -> Transport:
    return Transport(
        f"http://127.0.0.1:{server.server_port}",
        retry_timeout=retry_timeout,
        request_timeout=10.0,
        backoff_initial=0.01,
    )


def test_body_is_read_whole_into_a_writable_buffer_and_the_connection_kept(server):
    transport = _transport(server)
    for _ in range(2):
        response = transport.request("GET", "/model", into_buffer=True)
        buffer = response.buffer
        assert bytes(buffer) == BODY
        assert not buffer.readonly
    transport.close()
    assert server.gets == 2
    assert len(server.connections) == 1  # the buffer read returned the connection to the pool


def test_a_body_cut_short_is_retried(server):
    server.truncate_first = 2
    response = _transport(server).request("GET", "/model", into_buffer=True)
    assert bytes(response.buffer) == BODY
    assert server.gets == 3


def test_a_body_always_cut_short_ends_in_server_unreachable(server):
    server.truncate_first = 10**6
    with pytest.raises(ServerUnreachable, match="body"):
        _transport(server, retry_timeout=0.3).request("GET", "/model", into_buffer=True)


def test_update_is_sent_from_its_parts_with_a_content_length(server):
    weights = {"w": np.arange(100_000, dtype=np.float32), "b": np.ones(3, dtype=np.int64)}
    parts = wire.encode_parts(weights)
    _transport(server).request("POST", "/update", data=BufferBody(parts))
    [(received, transfer_encoding)] = server.received
    assert transfer_encoding is None
    assert received == wire.encode(weights)
    np.testing.assert_array_equal(wire.decode(received)["w"], weights["w"])
