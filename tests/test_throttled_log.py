"""The throttled warnings, and waitress's queue-depth warning going through them."""

from __future__ import annotations

import http.client
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.http_server import start_http_server
from fl_kubeflow.server.throttled_log import ThrottledWarnings


def test_a_repeated_warning_is_written_once_per_interval_with_the_count_held_back(
    caplog, monkeypatch
):
    now = [100.0]
    monkeypatch.setattr("fl_kubeflow.server.throttled_log.time.monotonic", lambda: now[0])
    warnings = ThrottledWarnings(logging.getLogger("test.throttled"), interval=10.0)
    with caplog.at_level(logging.WARNING, logger="test.throttled"):
        for depth in range(5):
            warnings.warning("Task queue depth is %d", depth)
        now[0] += 10.0
        warnings.warning("Task queue depth is %d", 7)
    assert [r.getMessage() for r in caplog.records] == [
        "Task queue depth is 0",
        "Task queue depth is 7 (4 more such warnings in the last 10 s)",
    ]


def test_waitress_queue_depth_warnings_go_through_the_throttle(caplog):
    config = ServerConfig(num_clients=1, num_rounds=1, host="127.0.0.1", port=0)

    def slow(environ, start_response):
        time.sleep(0.2)
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    server = start_http_server(slow, config)
    try:
        # More at once than there are workers, within the strangers' share of connections
        # (these requests carry no credential).
        requests = config.server_threads + 8
        with (
            caplog.at_level(logging.WARNING, logger="waitress.queue"),
            ThreadPoolExecutor(requests) as pool,
        ):
            statuses = list(pool.map(lambda _: _get(server.port), range(requests)))
        assert statuses == [200] * requests
        # Every worker was busy for most of them: waitress warned of each, once written.
        warned = [r.getMessage() for r in caplog.records if r.name == "waitress.queue"]
        assert len(warned) == 1 and warned[0].startswith("Task queue depth is")
    finally:
        server.close()


def _get(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.mark.parametrize("members", [[], ["a"], [str(i) for i in range(1000)]])
def test_was_sampled_answers_as_the_list_does_even_after_it_is_replaced(members):
    from fl_kubeflow.server.records import RoundRecord

    record = RoundRecord(1, 0.0, "", None, sampled=list(members), eval_sampled=members[:1])
    for client_id in [*members[:3], "x", "999", "1000"]:
        assert record.was_sampled(client_id) == (client_id in members)
        assert record.was_sampled(client_id, evaluate=True) == (client_id in members[:1])
    record.sampled = sorted([*record.sampled, "x"])  # as a late joiner is added
    assert record.was_sampled("x")
    record.sampled.append("y")  # changed in place: its length tells
    assert record.was_sampled("y")
