"""Whole runs: a real server process and real client processes on loopback."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fl_kubeflow.client.numpy_trainers import random_weights
from tests.fl_processes import start_client, start_delta_clients, start_server, wait_all
from tests.ports import free_port

SHAPES = ["--shapes", "16x8,8,3x3x2"]


@pytest.mark.parametrize("io_threads", [None, "1", "3"])
def test_exact_fedavg_over_three_rounds(tmp_path, io_threads):
    # None: the default, one socket loop per core (up to 4).
    rounds, deltas, counts = 3, [0.5, -1.0, 2.0], [10, 30, 60]
    loops = ["--io-threads", io_threads] if io_threads else []
    server = start_server(tmp_path, "--clients", "3", "--rounds", str(rounds), *loops)
    clients = start_delta_clients(tmp_path, server.url, deltas, counts, *SHAPES)
    assert wait_all(clients) == [0, 0, 0], [c.log() for c in clients]
    assert server.wait() == 0, server.log()
    step = sum(d * n for d, n in zip(deltas, counts, strict=False)) / sum(counts)
    initial = random_weights([(16, 8), (8,), (3, 3, 2)], seed=0)
    final = server.final_weights()
    assert sorted(final) == sorted(initial)
    for name, w0 in initial.items():
        np.testing.assert_allclose(final[name], w0 + rounds * step, atol=1e-6)
        assert final[name].dtype == np.float32
    history = server.history()
    assert history["status"] == "finished"
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2, 3]
    for record in history["rounds"][1:]:
        assert record["contributors"] == ["0", "1", "2"]
        assert record["num_examples"] == 100
        assert record["bytes_in"] > 0 and record["bytes_out"] > 0
        assert record["duration_s"] >= 0
    # The delta trainer evaluates the mean weight; every client reported every round.
    assert all(r["evaluate"]["num_clients"] == 3 for r in history["rounds"])
    assert clients[0].summary()["rounds_trained"] == [1, 2, 3]


def test_quorum_closes_rounds_without_a_silent_client(tmp_path):
    server = start_server(
        tmp_path,
        "--clients",
        "3",
        "--rounds",
        "2",
        "--min-clients",
        "2",
        "--round-timeout",
        "3",
        "--grace-period",
        "3",
    )
    fast = [start_client(tmp_path, server.url, i, "--delta", "1") for i in (0, 1)]
    silent = start_client(tmp_path, server.url, 2, "--fit-delay", "60")
    assert wait_all(fast, timeout=60) == [0, 0], [c.log() for c in fast]
    assert server.wait(60) == 0, server.log()
    silent.proc.kill()
    history = server.history()
    assert history["status"] == "finished"
    first, second = history["rounds"][1], history["rounds"][2]
    assert first["contributors"] == ["0", "1"] and first["timed_out"] == ["2"]
    # A client that timed out is not waited for again: round 2 closes without the timeout.
    assert second["contributors"] == ["0", "1"] and second["timed_out"] == []
    assert second["duration_s"] < 3


def test_run_fails_naming_the_missing_client(tmp_path):
    server = start_server(
        tmp_path,
        "--clients",
        "3",
        "--rounds",
        "2",
        "--min-clients",
        "3",
        "--round-timeout",
        "2",
        "--grace-period",
        "3",
    )
    fast = [start_client(tmp_path, server.url, i) for i in (0, 1)]
    silent = start_client(tmp_path, server.url, 2, "--fit-delay", "60")
    assert server.wait(60) == 1
    assert "only 2 of min_clients=3 clients reported" in server.log()
    assert "missing: ['2']" in server.log()
    assert wait_all(fast, timeout=60) == [1, 1]
    assert "missing: ['2']" in fast[0].log()  # the clients are told why
    silent.proc.kill()
    history = server.history()
    assert history["status"] == "failed" and "missing: ['2']" in history["error"]


def test_too_few_clients_join_in_time(tmp_path):
    server = start_server(
        tmp_path,
        "--clients",
        "3",
        "--rounds",
        "1",
        "--client-ids",
        "0,1,2",
        # Long enough for a client process to start, join and propose the initial model
        # on a loaded machine (2 s was not): the failure must be the missing clients.
        "--join-timeout",
        "8",
        "--grace-period",
        "2",
    )
    client = start_client(tmp_path, server.url, 0)
    assert server.wait(60) == 1
    assert "only 1 of 3 clients joined within join_timeout=8s" in server.log()
    assert "missing: ['1', '2']" in server.log()
    assert client.wait(60) == 1


def test_clients_started_before_the_server_connect_once_it_is_up(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    clients = [start_client(tmp_path, url, i, "--retry-timeout", "60") for i in (0, 1)]
    time.sleep(2.0)  # the clients are retrying against a closed port by now
    assert all(c.proc.poll() is None for c in clients)
    server = start_server(tmp_path, "--clients", "2", "--rounds", "2", port=port)
    assert wait_all(clients) == [0, 0], [c.log() for c in clients]
    assert server.wait() == 0
    assert server.history()["status"] == "finished"


def test_unreachable_server_gives_up_at_the_retry_deadline(tmp_path):
    client = start_client(tmp_path, f"http://127.0.0.1:{free_port()}", 0, "--retry-timeout", "2")
    assert client.wait(60) == 1
    assert "retry_timeout" in client.log()


def test_a_lost_goodbye_after_finished_is_not_a_failure(tmp_path):
    # Client 1 evaluates the final model for 4 s; the server waits 1 s for it, then exits.
    server = start_server(tmp_path, "--clients", "2", "--rounds", "1", "--grace-period", "1")
    clients = [
        start_client(tmp_path, server.url, 0),
        start_client(tmp_path, server.url, 1, "--eval-delay", "4", "--retry-timeout", "120"),
    ]
    assert server.wait() == 0
    # Not the 120 s retry timeout, and not a failure: the run was over.
    assert wait_all(clients, timeout=60) == [0, 0], clients[1].log()
    assert "the goodbye was lost" in clients[1].log()
