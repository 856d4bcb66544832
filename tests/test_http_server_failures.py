"""A server that cannot serve says so: socket loops past 1,024 descriptors, a loop that dies.

Before: waitress's loops used select(), which refuses any descriptor of 1024 or
above (``ValueError: filedescriptor out of range in select()``); with a thousand
clients the loops died, and the process stayed up serving nobody until the round
timed out. Now the loops poll(), and a loop that ends before ``close`` fails the run
at once (readiness 503, the reason as the run's error).
"""

from __future__ import annotations

import http.client
import os
import resource
import threading

import numpy as np
import pytest

from fl_kubeflow.server.app import create_app
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.federation import Federation
from fl_kubeflow.server.http_server import _run_loop, start_http_server
from fl_kubeflow.server.records import summarise_ids
from fl_kubeflow.strategies import FedAvg

# Descriptors opened before the server, so that its connections' numbers pass 1024.
FILLER = 1100


def _hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


@pytest.fixture
def high_descriptors():
    """FILLER open descriptors, so that the next sockets get numbers above 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FILLER + 256
    assert hard == resource.RLIM_INFINITY or hard >= wanted, f"open-file hard limit {hard}"
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    opened = [os.open(os.devnull, os.O_RDONLY) for _ in range(FILLER)]
    try:
        assert max(opened) >= 1024
        yield
    finally:
        for fd in opened:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_connections_past_descriptor_1024_are_served(high_descriptors):
    failures: list[str] = []
    config = ServerConfig(num_clients=4, num_rounds=1, host="127.0.0.1", port=0, io_threads=2)
    server = start_http_server(_hello, config, on_failure=failures.append)
    try:
        for _ in range(6):  # each connection's descriptor is above 1024
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                assert (response.status, response.read()) == (200, b"hello")
                assert conn.sock.fileno() >= 1024
            finally:
                conn.close()
        assert failures == []
    finally:
        server.close()


class _DyingLoop:
    """A socket loop whose poll fails as select() did past descriptor 1023."""

    def run(self) -> None:
        raise ValueError("filedescriptor out of range in select()")


class _EmptyLoop:
    """A socket loop left with no sockets: waitress's loop then returns."""

    def run(self) -> None:
        return None


def test_a_socket_loop_that_ends_before_close_is_reported():
    failures: list[str] = []
    closing = threading.Event()
    _run_loop(_DyingLoop(), closing, "waitress-io-1", failures.append)
    _run_loop(_EmptyLoop(), closing, "waitress-io-2", failures.append)
    assert failures == [
        "the HTTP server's socket loop waitress-io-1 died: ValueError: filedescriptor out "
        "of range in select()",
        "the HTTP server's socket loop waitress-io-2 stopped",
    ]
    closing.set()  # the end close() asks for is not a failure
    _run_loop(_DyingLoop(), closing, "waitress-io-1", failures.append)
    assert len(failures) == 2


def test_an_aborted_run_is_not_ready_and_ends_failed_at_once():
    config = ServerConfig(num_clients=2, num_rounds=1, join_timeout=600.0, grace_period=600.0)
    federation = Federation(config, FedAvg())
    client = create_app(federation, config).test_client()
    assert client.get("/readyz").status_code == 200
    ended: list[bool] = []
    driver = threading.Thread(target=lambda: ended.append(federation.run()))
    driver.start()
    federation.abort("the HTTP server's socket loop waitress-io-0 died: ValueError: x")
    driver.join(timeout=10)
    assert ended == [False], "run() did not end at once after abort"
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["phase"] == "failed"
    assert "socket loop waitress-io-0 died" in (federation.error or "")
    assert "socket loop" in client.get("/v1/status").get_json()["error"]


def test_long_lists_of_client_ids_are_summarised_in_reasons():
    assert summarise_ids(["b", "a"]) == "['a', 'b']"
    ids = [f"c{i:04d}" for i in range(1000)]
    text = summarise_ids(reversed(ids))
    assert text == f"{ids[:20]!r} and 980 more (1000 in all)"
    # A run of 1,000 expected clients that none joins fails naming 20 of them, not 1,000.
    config = ServerConfig(num_clients=1000, num_rounds=1, client_ids=tuple(ids), join_timeout=0.05)
    federation = Federation(config, FedAvg(), {"w": np.zeros(3, np.float32)})
    assert federation.run() is False
    assert federation.error is not None and federation.error.endswith("and 980 more (1000 in all)")
    assert len(federation.error) < 600
