"""Faults survived: killed clients, a killed and restarted server, slow clients, auth."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import requests

from fl_kubeflow.auth import new_token
from fl_kubeflow.client.numpy_trainers import random_weights
from tests.fl_processes import RawClient, start_client, start_delta_clients, start_server, wait_all

SHAPES = [(16, 8), (8,)]


def expected_weights(history: dict, deltas: dict[str, float], counts: dict[str, int]):
    """w0 plus, per round, the example-weighted mean delta of that round's contributors."""
    weights = random_weights(SHAPES, seed=0)
    for record in history["rounds"][1:]:
        who = record["contributors"]
        step = sum(deltas[c] * counts[c] for c in who) / sum(counts[c] for c in who)
        weights = {k: v + np.float32(step) for k, v in weights.items()}
    return weights


def test_client_killed_mid_round_run_finishes_with_quorum(tmp_path):
    token = new_token()
    server = start_server(
        tmp_path,
        "--clients",
        "3",
        "--rounds",
        "4",
        "--min-clients",
        "2",
        "--round-timeout",
        "3",
        "--grace-period",
        "3",
        token=token,
    )
    deltas, counts = {"0": 1.0, "1": 2.0, "2": -4.0}, {"0": 1, "1": 2, "2": 5}
    clients = [
        start_client(
            tmp_path,
            server.url,
            int(i),
            "--delta",
            str(deltas[i]),
            "--num-examples",
            str(counts[i]),
            "--fit-delay",
            "0.3",
            token=token,
        )
        for i in deltas
    ]
    server.wait_for_round(1)
    os.kill(clients[2].proc.pid, signal.SIGKILL)
    assert wait_all(clients[:2]) == [0, 0]
    assert server.wait() == 0, server.log()
    history = server.history()
    assert history["status"] == "finished"
    assert len(history["rounds"]) == 5
    assert history["rounds"][1]["contributors"] == ["0", "1", "2"]
    timed_out = [r["round"] for r in history["rounds"][1:] if r["timed_out"] == ["2"]]
    assert len(timed_out) == 1, history["rounds"]
    assert history["rounds"][-1]["contributors"] == ["0", "1"]
    final = server.final_weights()
    for name, value in expected_weights(history, deltas, counts).items():
        np.testing.assert_allclose(final[name], value, atol=1e-5)


def test_server_killed_and_restarted_resumes_to_the_same_weights(tmp_path):
    token = new_token()
    rounds, deltas, counts = 6, [0.5, -1.5], [3, 1]
    common = [
        "--clients",
        "2",
        "--rounds",
        str(rounds),
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--grace-period",
        "5",
        "--join-timeout",
        "60",
    ]
    server = start_server(tmp_path, *common, token=token)
    clients = start_delta_clients(
        tmp_path,
        server.url,
        deltas,
        counts,
        "--fit-delay",
        "0.4",
        "--retry-timeout",
        "60",
        token=token,
    )
    server.wait_for_round(2)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    restarted = start_server(tmp_path, *common, port=server.port, token=token)
    assert wait_all(clients) == [0, 0], [c.log() for c in clients]
    assert restarted.wait() == 0, restarted.log()
    assert "resumed from checkpoint after round" in restarted.log()
    history = restarted.history()
    assert history["status"] == "finished"
    assert [r["round"] for r in history["rounds"]] == list(range(rounds + 1))
    assert all(r["contributors"] == ["0", "1"] for r in history["rounds"][1:])
    step = sum(d * n for d, n in zip(deltas, counts, strict=True)) / sum(counts)
    final = restarted.final_weights()
    for name, w0 in random_weights([(16, 8), (8,)], seed=0).items():
        # Exactly R rounds: a round lost or counted twice would move the result by `step`.
        np.testing.assert_allclose(final[name], w0 + rounds * step, atol=1e-5)


def test_slow_client_is_refused_as_stale_and_catches_up(tmp_path):
    server = start_server(
        tmp_path,
        "--clients",
        "3",
        "--rounds",
        "3",
        "--min-clients",
        "2",
        "--round-timeout",
        "2",
        "--grace-period",
        "5",
    )
    fast = [start_client(tmp_path, server.url, i, "--fit-delay", "1.5") for i in (0, 1)]
    slow = start_client(tmp_path, server.url, 2, "--fit-delay", "4", "--slow-rounds", "1")
    assert wait_all([*fast, slow]) == [0, 0, 0], slow.log()
    assert server.wait() == 0
    history = server.history()
    first = history["rounds"][1]
    assert first["contributors"] == ["0", "1"] and first["timed_out"] == ["2"]
    assert first["refused"][0]["client"] == "2"
    assert "closed" in first["refused"][0]["reason"]
    assert slow.summary()["stale_rounds"] == [1]
    # It came back: it trained in a later round.
    assert any("2" in r["contributors"] for r in history["rounds"][2:])


def test_requests_without_the_token_change_nothing(tmp_path):
    token = new_token()
    server = start_server(tmp_path, "--clients", "2", "--rounds", "1", token=token)
    try:
        for headers in (
            {},
            {"Authorization": "Bearer " + "x" * len(token)},
            {"Authorization": token},
            {"Authorization": f"Bearer {token}x"},
        ):
            stranger = RawClient(server.url, "0", headers=headers)
            response = stranger.join()
            assert response.status_code == 401, response.text
            assert response.json()["error"] == "unauthorized"
            assert stranger.propose({"w": np.zeros(2, np.float32)}).status_code == 401
            status = requests.get(f"{server.url}/v1/status", headers=headers, timeout=5)
            assert status.status_code == 401
        # Kubernetes probes stay open.
        assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
        assert requests.get(f"{server.url}/readyz", timeout=5).status_code == 200
        assert server.status()["joined"] == []
        assert (
            'fl_requests_rejected_total{reason="unauthorized"} 12'
            in requests.get(f"{server.url}/metrics", timeout=5).text
        )
    finally:
        server.kill()


def test_token_appears_in_no_log_line(tmp_path):
    token = new_token()
    server = start_server(
        tmp_path, "--clients", "2", "--rounds", "2", token=token, log_level="DEBUG"
    )
    clients = [
        start_client(tmp_path, server.url, i, token=token, log_level="DEBUG") for i in (0, 1)
    ]
    assert wait_all(clients) == [0, 0]
    assert server.wait() == 0
    logs = [server.log(), *(c.log() for c in clients)]
    assert all(log.strip() for log in logs)
    assert not any(token in log for log in logs)
    assert token not in (server.output / "history.json").read_text()


def test_short_token_is_refused_at_start(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "fl_kubeflow", "server", "--port", "0"],
        env={**os.environ, "FL_KUBEFLOW_TOKEN": "short"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "token must be at least 22 characters" in done.stderr


def test_restarted_server_with_a_new_token_clients_read_it_again(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(new_token())
    common = [
        "--clients",
        "2",
        "--rounds",
        "4",
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--grace-period",
        "5",
        "--token-file",
        str(token_file),
    ]
    server = start_server(tmp_path, *common)
    clients = [
        start_client(
            tmp_path,
            server.url,
            i,
            "--delta",
            "1",
            "--fit-delay",
            "0.4",
            "--retry-timeout",
            "60",
            "--token-file",
            str(token_file),
        )
        for i in (0, 1)
    ]
    server.wait_for_round(1, token=token_file.read_text())
    # Round 1 counts as completed just before its checkpoint is on disk: killed in between,
    # the replacement would start afresh, and this test is about the token, not that race.
    state = tmp_path / "ckpt" / "state.json"
    deadline = time.monotonic() + 30
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    token_file.write_text(new_token())  # the replacement server pod makes a new token
    restarted = start_server(tmp_path, *common, port=server.port)
    assert wait_all(clients) == [0, 0], [c.log() for c in clients]
    assert restarted.wait() == 0, restarted.log()
    assert "token refused; reading it again" in clients[0].log()
    history = restarted.history()
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2, 3, 4]


def test_server_restarted_without_checkpoint_starts_over_with_the_rejoining_clients(tmp_path):
    common = ["--clients", "2", "--rounds", "3", "--grace-period", "5", "--join-timeout", "60"]
    server = start_server(tmp_path, *common)
    clients = [
        start_client(
            tmp_path, server.url, i, "--delta", "1", "--fit-delay", "0.5", "--retry-timeout", "60"
        )
        for i in (0, 1)
    ]
    server.wait_for_round(1)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    # No checkpoint: the new server knows nothing, not even the model. The clients
    # rejoin, one of them proposes its initial weights again, and the run starts over.
    restarted = start_server(tmp_path, *common, port=server.port)
    assert wait_all(clients) == [0, 0], [c.log() for c in clients]
    assert restarted.wait() == 0, restarted.log()
    assert "initial model from client" in restarted.log()
    history = restarted.history()
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2, 3]
    final = restarted.final_weights()
    for name, w0 in random_weights(SHAPES, seed=0).items():
        np.testing.assert_allclose(final[name], w0 + 3.0, atol=1e-5)
