"""One identity per client: the server's check of every /v1 request, and its registry reloads.

``Identities`` directly (the order 401 -> 403, revocation, observers, the legacy shared
token, reloading the registry file however it is replaced), then the app through Flask's
test client: a client presenting another's token is refused and changes nothing, a
client revoked during a round is dropped from it while what it sent stays. Whole runs
with real processes are in test_revocation_runs.py.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from fl_kubeflow import wire
from fl_kubeflow.credentials import OBSERVER, ClientCredential, Registry, issue, issue_many
from fl_kubeflow.server.app import create_app
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.errors import Forbidden, Revoked, Unauthorized
from fl_kubeflow.server.federation import Federation
from fl_kubeflow.server.identity import SHARED, Identities
from fl_kubeflow.strategies import FedAvg

W0 = {"w": np.zeros(4, dtype=np.float32)}
WAIT = 30.0  # long-polls wake on the round opening; this only bounds a broken run


def registry_file(tmp_path: Path, ids: list[str]) -> tuple[Path, dict[str, ClientCredential]]:
    registry, credentials = issue_many(ids)
    path = tmp_path / "registry.json"
    registry.save(path)
    return path, {c.client_id: c for c in credentials}


# --- Identities ---------------------------------------------------------------------------


def test_authenticate_401_then_403_in_that_order(tmp_path: Path) -> None:
    path, creds = registry_file(tmp_path, ["a", "b"])
    ids = Identities.from_file(path)
    a = creds["a"].authorization
    assert ids.authenticate(a, "a", "/v1/model").name == "a"
    assert ids.authenticate(a, None, "/v1/join").name == "a"
    with pytest.raises(Unauthorized, match="missing"):
        ids.authenticate(None, "a", "/v1/model")
    with pytest.raises(Unauthorized, match="missing"):
        ids.authenticate("Basic xyz", "a", "/v1/model")
    # An unknown token is 401 even when it claims someone else's id: nothing of the
    # registry is revealed to a stranger.
    with pytest.raises(Unauthorized, match="unknown") as unknown:
        ids.authenticate("Bearer " + issue("a").token, "b", "/v1/model")
    assert unknown.value.code == "unauthorized" and unknown.value.status == 401
    with pytest.raises(Forbidden, match="cannot act as 'b'") as forbidden:
        ids.authenticate(a, "b", "/v1/update")
    assert (forbidden.value.status, forbidden.value.code) == (403, "forbidden")
    # Outside /v1 (probes, /metrics) nothing is asked.
    assert ids.authenticate(None, None, "/healthz") is None


def test_observers_read_the_status_only(tmp_path: Path) -> None:
    watcher = issue("progress")
    registry = Registry().enrol(issue("a")).enrol(watcher, role=OBSERVER)
    ids = Identities(registry)
    assert ids.authenticate(watcher.authorization, None, "/v1/status").role == OBSERVER
    for path in ("/v1/join", "/v1/model", "/v1/update", "/v1/evaluate", "/v1/leave"):
        with pytest.raises(Forbidden, match="observer"):
            ids.authenticate(watcher.authorization, None, path)
    # An observer's name is not a client's: it cannot claim it in a JSON body either.
    with pytest.raises(Forbidden):
        ids.check_claim(ids.authenticate(watcher.authorization, None, "/v1/status"), "progress")


def test_revoked_credentials_are_401_revoked(tmp_path: Path) -> None:
    registry, (a, b) = issue_many(["a", "b"])
    ids = Identities(registry.revoke("b"))
    with pytest.raises(Revoked) as revoked:
        ids.authenticate(b.authorization, "b", "/v1/model")
    assert (revoked.value.status, revoked.value.code) == (401, "revoked")
    assert ids.authenticate(a.authorization, "a", "/v1/model").name == "a"


def test_open_runs_and_the_legacy_shared_token(tmp_path: Path) -> None:
    assert Identities().authenticate(None, "anyone", "/v1/join") is None
    shared = issue("x").token
    ids = Identities(shared_token=shared)
    for claimed in ("a", "b", None):
        principal = ids.authenticate(f"Bearer {shared}", claimed, "/v1/update")
        assert principal is SHARED
        ids.check_claim(principal, "whoever")  # any client id, as before
    with pytest.raises(Unauthorized):
        ids.authenticate(f"Bearer {shared}x", "a", "/v1/update")


def test_limit_for_is_the_enrolment_declared_maximum(tmp_path: Path) -> None:
    registry = Registry().enrol(issue("a"), max_examples=500).enrol(issue("b"))
    ids = Identities(registry)
    assert (ids.limit_for("a"), ids.limit_for("b"), ids.limit_for("nobody")) == (500, None, None)
    assert Identities().limit_for("a") is None


def test_reload_sees_atomic_replace_in_place_rewrite_and_bad_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, creds = registry_file(tmp_path, ["a", "b", "c"])
    dropped: list[str] = []
    ids = Identities.from_file(path, on_revoke=dropped.append)
    assert ids.reload_if_changed() == []  # unchanged: not even read
    # Atomic replace (what `fl-kubeflow credentials revoke` does): a new inode.
    Registry.load(path).revoke("b").save(path)
    assert ids.reload_if_changed() == ["b"] and dropped == ["b"]
    with pytest.raises(Revoked):
        ids.authenticate(creds["b"].authorization, "b", "/v1/model")
    # Rewritten in place with a half-written file: the old registry stays, logged once.
    good = path.read_text()
    caplog.set_level(logging.ERROR, logger="fl_kubeflow.server")
    with path.open("w") as out:
        out.write(good[: len(good) // 2])
    assert ids.reload_if_changed() == [] and ids.reload_if_changed() == []
    errors = [r for r in caplog.records if "not reloaded" in r.getMessage()]
    assert len(errors) == 1, caplog.text
    assert ids.authenticate(creds["a"].authorization, "a", "/v1/model").name == "a"
    # In place again, now whole, with c removed outright: c is dropped like a revocation.
    registry = Registry.from_json(json.loads(good))
    trimmed = Registry({n: e for n, e in registry.enrolments.items() if n != "c"}, registry.revoked)
    with path.open("w") as out:
        out.write(json.dumps(trimmed.to_json()))
    assert ids.reload_if_changed() == ["c"] and dropped == ["b", "c"]
    with pytest.raises(Unauthorized, match="unknown"):
        ids.authenticate(creds["c"].authorization, "c", "/v1/model")
    for record in caplog.records:  # no token, no digest, in any line
        for secret in [c.token for c in creds.values()] + [
            e.digest for e in registry.enrolments.values()
        ]:
            assert secret not in record.getMessage()


def test_reload_follows_a_kubernetes_secret_symlink_swap(tmp_path: Path) -> None:
    """A mounted Secret: registry.json -> ..data/registry.json, ..data -> ..<timestamp>;
    an update writes a new timestamped folder and renames a new ..data link over the old."""
    mount = tmp_path / "mount"
    registry, (a, _) = issue_many(["a", "b"])
    first = mount / "..2026_12_01_16_00_00.1"
    registry.save(first / "registry.json")
    (mount / "..data").symlink_to(first.name)
    (mount / "registry.json").symlink_to("..data/registry.json")
    dropped: list[str] = []
    ids = Identities.from_file(mount / "registry.json", on_revoke=dropped.append)
    second = mount / "..2026_12_01_16_00_05.2"
    registry.revoke("a").save(second / "registry.json")
    (mount / "..data_tmp").symlink_to(second.name)
    os.replace(mount / "..data_tmp", mount / "..data")
    assert ids.reload_if_changed() == ["a"] and dropped == ["a"]
    with pytest.raises(Revoked):
        ids.authenticate(a.authorization, "a", "/v1/status")


def test_watch_reloads_on_its_own_within_the_interval(tmp_path: Path) -> None:
    path, _ = registry_file(tmp_path, ["a", "b"])
    revoked = threading.Event()
    ids = Identities.from_file(path, on_revoke=lambda client_id: revoked.set())
    ids.watch(0.05)
    try:
        Registry.load(path).revoke("a").save(path)
        assert revoked.wait(30), "the watcher did not see the revocation"
    finally:
        ids.close()


# --- the app ------------------------------------------------------------------------------


class Api:
    """The app's test client, each request with one client's credential."""

    def __init__(self, http: FlaskClient, federation: Federation) -> None:
        self.http, self.federation = http, federation

    def call(
        self, method: str, path: str, token: ClientCredential, client_id: str, **kwargs: Any
    ) -> Any:
        headers = {
            "Authorization": token.authorization,
            "X-FL-Client-Id": client_id,
            **kwargs.pop("headers", {}),
        }
        return self.http.open(path, method=method, headers=headers, **kwargs)

    def join(self, token: ClientCredential, client_id: str | None = None) -> Any:
        claimed = client_id or token.client_id
        return self.call("POST", "/v1/join", token, claimed, json={"client_id": claimed})

    def update(self, token: ClientCredential, delta: float, count: int, client_id: str = "") -> Any:
        body = wire.encode({"w": W0["w"] + np.float32(delta)})
        headers = {"X-FL-Round": "1", "X-FL-Num-Examples": str(count)}
        return self.call(
            "POST", "/v1/update", token, client_id or token.client_id, data=body, headers=headers
        )


def build(tmp_path: Path, ids: list[str], **options: Any) -> tuple[Api, dict[str, Any]]:
    path, creds = registry_file(tmp_path, ids)
    settings: dict[str, Any] = dict(
        num_clients=len(ids),
        num_rounds=1,
        host="127.0.0.1",
        port=0,
        join_timeout=60.0,
        round_timeout=60.0,
        grace_period=1.0,
        poll_timeout=WAIT,
        credentials=path,
        initial_weights=None,
    )
    settings.update(options)
    config = ServerConfig(**settings)
    federation = Federation(config, FedAvg(), initial_weights=W0)
    identities = Identities.from_file(path, on_revoke=federation.revoke)
    threading.Thread(target=federation.run, name="federation", daemon=True).start()
    api = Api(create_app(federation, config, identities).test_client(), federation)
    return api, {"creds": creds, "path": path, "identities": identities}


def error(response: Any) -> tuple[int, str]:
    return response.status_code, response.json["error"]


def test_a_client_cannot_act_as_another(tmp_path: Path) -> None:
    api, env = build(tmp_path, ["a", "b"])
    a, b = env["creds"]["a"], env["creds"]["b"]
    # a's token, b's id: in the header, in the JSON body, or both.
    assert error(api.join(a, "b")) == (403, "forbidden")
    assert error(api.call("POST", "/v1/join", a, "a", json={"client_id": "b"})) == (
        403,
        "forbidden",
    )
    assert api.federation.status()["joined"] == []
    assert api.join(a).status_code == 200 and api.join(b).status_code == 200
    assert api.call("GET", "/v1/model?round=1&wait=30", a, "a").status_code == 200
    # a sends an update as b: refused before its body is looked at; b's own counts.
    assert error(api.update(a, 100.0, 1000, client_id="b")) == (403, "forbidden")
    assert error(
        api.call(
            "POST",
            "/v1/evaluate",
            a,
            "a",
            json={"client_id": "b", "round": 0, "num_examples": 1, "metrics": {}},
        )
    ) == (403, "forbidden")
    assert error(api.call("POST", "/v1/leave", a, "a", json={"client_id": "b"})) == (
        403,
        "forbidden",
    )
    assert api.update(a, 1.0, 1).json["accepted"] is True
    assert api.update(b, 5.0, 3).json["accepted"] is True
    final = api.call("GET", "/v1/model?round=2&wait=30", b, "b")
    assert final.headers["X-FL-Phase"] == "finished"
    np.testing.assert_allclose(wire.decode(final.data)["w"], 4.0)  # (1 + 15) / 4
    rejections = api.federation.metrics().counters.rejections
    assert rejections.get("forbidden") == 5, rejections


def test_unknown_and_revoked_tokens_are_401(tmp_path: Path) -> None:
    api, env = build(tmp_path, ["a", "b"])
    stranger = issue("a")
    assert error(api.join(stranger)) == (401, "unauthorized")
    env["identities"].registry.revoke("b").save(env["path"])
    assert env["identities"].reload_if_changed() == ["b"]
    assert error(api.join(env["creds"]["b"])) == (401, "revoked")
    status = api.federation.status()
    assert status["joined"] == [] and status["revoked"] == []  # b never joined


def test_a_client_revoked_mid_round_is_dropped_and_the_round_closes_with_quorum(
    tmp_path: Path,
) -> None:
    api, env = build(tmp_path, ["a", "b", "c"], min_clients=2)
    creds, identities = env["creds"], env["identities"]
    for name in "abc":
        assert api.join(creds[name]).status_code == 200
    assert api.call("GET", "/v1/model?round=1&wait=30", creds["a"], "a").status_code == 200
    # c's update is in before its revocation: it stays. b is revoked before sending.
    assert api.update(creds["c"], 9.0, 1).json["accepted"] is True
    identities.registry.revoke("b").save(env["path"])
    assert identities.reload_if_changed() == ["b"]
    assert error(api.update(creds["b"], 100.0, 1)) == (401, "revoked")
    assert api.update(creds["a"], 1.0, 1).json["accepted"] is True
    final = api.call("GET", "/v1/model?round=2&wait=30", creds["a"], "a")
    assert final.headers["X-FL-Phase"] == "finished", final.json
    np.testing.assert_allclose(wire.decode(final.data)["w"], 5.0)  # (1 + 9) / 2
    history = api.federation.history()
    assert history["revoked"] == ["b"]
    assert history["rounds"][1]["contributors"] == ["a", "c"]
    # The Federation refuses b too, should a request pass the header check just before.
    with pytest.raises(Revoked):
        api.federation.submit_evaluation("b", 1, 1, {})
