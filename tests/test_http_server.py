"""The WSGI server under the app: several waitress socket loops on one listening socket."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from fl_kubeflow.cpus import usable_cpus
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.http_server import start_http_server


class SlowEcho:
    """Reads the body, takes 0.3 s, answers with its length; counts requests in flight."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = self.most_in_flight = 0

    def __call__(self, environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(0.3)
        with self.lock:
            self.in_flight -= 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(len(body)).encode()]


def _post(port: int, size: int) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/", body=b"x" * size)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _io_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("waitress-io-"))


def test_three_loops_serve_concurrent_connections_then_all_close():
    config = ServerConfig(num_clients=8, num_rounds=1, host="127.0.0.1", port=0, io_threads=3)
    app = SlowEcho()
    server = start_http_server(app, config)
    try:
        assert _io_threads() == ["waitress-io-0", "waitress-io-1", "waitress-io-2"]
        sizes = [1_000 * (i + 1) for i in range(6)] + [3_000_000] * 6  # small and spooled
        with ThreadPoolExecutor(len(sizes)) as pool:
            answers = list(pool.map(lambda s: _post(server.port, s), sizes))
        assert answers == [(200, str(s).encode()) for s in sizes]
        # One pool of worker threads serves the requests of every loop, side by side.
        assert app.most_in_flight >= 4
    finally:
        server.close()
    deadline = time.monotonic() + 10
    while _io_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _io_threads() == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5)


def test_default_is_one_loop_per_usable_cpu_at_most_four():
    config = ServerConfig(num_clients=1, num_rounds=1)
    assert config.socket_loops == min(4, usable_cpus())
    assert ServerConfig(num_clients=1, num_rounds=1, io_threads=1).socket_loops == 1


@pytest.mark.parametrize("value", [0, 65])
def test_io_threads_out_of_range_is_refused(value):
    with pytest.raises(ValueError, match=f"io_threads must be between 1 and 64, got {value}"):
        ServerConfig(num_clients=1, num_rounds=1, io_threads=value)


@pytest.mark.parametrize(("option", "value"), [("--io-threads", "0"), ("--receive-slots", "-1")])
def test_cli_names_a_bad_socket_setting(option, value):
    result = subprocess.run(
        [sys.executable, "-m", "fl_kubeflow", "server", "--clients", "1", option, value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert option in result.stderr and repr(value) in result.stderr, result.stderr
