"""The end of a simulation: a worker's clients leave in a few requests (docs/simulation.md).

``POST /v1/leave {"client_ids": [...]}`` through Flask's test client (all or none, each
id authenticated as if it came alone), then ``fl-kubeflow simulate`` as a user runs it:
many numpy clients end the run at once, not after the server's grace period.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fl_kubeflow import protocol
from fl_kubeflow.auth import new_token
from tests.test_app_routes import Api, build, expect_error
from tests.test_identity import build as build_with_credentials
from tests.test_identity import error

RUN_TIMEOUT = 180.0  # a broken run fails the test here instead of hanging it


def joined_pair() -> Api:
    """Clients a and b joined a run guarded by a shared token."""
    api = build(token=new_token())
    for client_id in ("a", "b"):
        assert api.as_client(client_id).join().status_code == 200
    return api


def leave_all(api: Api, body: object) -> object:
    return api.post_json(protocol.LEAVE_PATH, body)


def test_a_batch_leaves_every_client_it_names() -> None:
    api = joined_pair()
    response = leave_all(api, {"client_ids": ["a", "b"]})
    assert (response.status_code, response.json) == (200, {"left": True, "clients": 2})
    assert api.get("/v1/status").json["active"] == []


def test_a_batch_with_one_bad_id_leaves_nobody() -> None:
    api = joined_pair()
    unknown = leave_all(api, {"client_ids": ["a", "mallory"]})
    expect_error(unknown, 403, "unknown_client", "has not joined")
    for body, reason in (
        ({"client_ids": []}, "list of 1 to"),
        ({"client_ids": "a"}, "list of 1 to"),
        ({"client_ids": ["a"] * (protocol.MAX_LEAVE_IDS + 1)}, "list of 1 to"),
        ({"client_ids": ["a", 7]}, "not a client id"),
        ({"client_ids": ["a", "b\n"]}, "not a client id"),
        ({"client_ids": ["a"], "client_id": "a"}, "not both"),
    ):
        expect_error(leave_all(api, body), 400, "bad_request", reason)
    assert api.get("/v1/status").json["active"] == ["a", "b"]


def test_a_clients_own_credential_cannot_leave_for_another(tmp_path: Path) -> None:
    api, env = build_with_credentials(tmp_path, ["a", "b"])
    a, b = env["creds"]["a"], env["creds"]["b"]
    assert api.join(a).status_code == 200 and api.join(b).status_code == 200

    def leave(token: object, ids: list[str]) -> object:
        return api.call("POST", protocol.LEAVE_PATH, token, "a", json={"client_ids": ids})

    assert error(leave(a, ["a", "b"])) == (403, "forbidden")
    assert api.federation.status()["active"] == ["a", "b"]  # nobody left
    assert leave(a, ["a"]).status_code == 200
    assert api.federation.status()["active"] == ["b"]


def test_thousands_of_clients_end_the_run_within_a_short_grace_period(tmp_path: Path) -> None:
    clients, workers = 1500, 2
    command = [
        sys.executable,
        "-m",
        "fl_kubeflow",
        "simulate",
        *("--clients", str(clients), "--fraction-fit", "0.01", "--rounds", "2"),
        *("--trainer", "numpy", "--params", "1000", "--workers", str(workers)),
        # One leave per client took longer than this even for a few hundred clients.
        *("--grace-period", "1"),
        *("--join-timeout", str(RUN_TIMEOUT), "--timeout", str(RUN_TIMEOUT)),
        *("--output", str(tmp_path)),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=RUN_TIMEOUT + 30, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    server_log = (tmp_path / "logs" / "server.log").read_text()
    assert "grace period over" not in server_log, server_log[-3000:]
    summary = json.loads((tmp_path / "simulation.json").read_text())
    assert summary["status"] == "finished"
    # 750 clients a worker, at most MAX_LEAVE_IDS a request: two requests each.
    assert [r["leave_requests"] for r in summary["worker_reports"]] == [2, 2]
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history["clients"]) == clients
