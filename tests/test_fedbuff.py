"""Asynchronous rounds (FedBuff) against a real server on loopback, update by update.

Scripted clients send numpy weights with known base versions; the expected versions
are computed here, independently, in float64 from docs/asynchronous.md's formula.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from fl_kubeflow import strategies, wire
from fl_kubeflow.async_params import AsyncParams
from fl_kubeflow.credentials import issue_many
from tests.fedbuff_server import serve_in_thread
from tests.fl_processes import RawClient

SHAPES = {"dense/kernel": (2, 3), "dense/bias": (3,)}
TIMEOUT = 60.0


def weights(seed: int) -> wire.Weights:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape).astype(np.float32) for name, shape in SHAPES.items()}


def spec(tmp_path, clients: str, rounds: int, **options) -> dict:
    return {
        "num_clients": len(clients.split(",")),
        "num_rounds": rounds,
        "client_ids": clients.split(","),
        "output_dir": str(tmp_path / "out"),
        "round_timeout": 60.0,
        "grace_period": 10.0,
        "async": options,
    }


def next_version(
    newest: wire.Weights,
    buffer: list[tuple[wire.Weights, wire.Weights, int, int]],
    exponent: float,
    eta: float,
) -> wire.Weights:
    """w[c] + eta * sum_i s(tau_i) n_i (w_i - w[b_i]) / sum_i n_i, in float64, then float32.

    ``buffer``: (w_i, w[b_i], n_i, tau_i) for each update.
    """
    total = sum(n for _, _, n, _ in buffer)
    out = {}
    for name in newest:
        mean = sum(
            (1.0 + tau) ** -exponent * n * (w[name].astype(np.float64) - base[name])
            for w, base, n, tau in buffer
        )
        out[name] = (newest[name].astype(np.float64) + eta * mean / total).astype(np.float32)
    return out


def assert_weights(actual: wire.Weights, expected: wire.Weights) -> None:
    assert set(actual) == set(expected)
    for name in expected:
        assert actual[name].dtype == np.float32
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-6, atol=1e-6)


def fetch(client: RawClient, server_round: int) -> tuple[int, wire.Weights]:
    """The training answer for ``server_round``: its X-FL-Round and model."""
    response = client.model(server_round, wait=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.headers["X-FL-Phase"] == "fit", response.headers
    return int(response.headers["X-FL-Round"]), wire.decode(response.content)


def send(client: RawClient, server_round: int, w: wire.Weights, n: int) -> dict:
    response = client.update(server_round, wire.encode(w), num_examples=n)
    assert response.status_code == 200, response.text
    return response.json()


def finish(server, clients: list[RawClient], next_rounds: list[int]):
    """Every client fetches "finished" and leaves; the run's result."""
    for client, server_round in zip(clients, next_rounds, strict=True):
        response = client.model(server_round, wait=TIMEOUT)
        assert response.headers["X-FL-Phase"] == "finished", response.text
        client.leave()
    result = server.wait(TIMEOUT)
    assert result.ok, result.error
    return result


def test_scripted_updates_give_the_exact_versions_and_staleness(tmp_path):
    """N = 3, K = 2, a = 0.5, eta = 0.5: versions 1 and 2 from fresh updates, version 3
    from one two versions stale (and a fresh one); each model as computed here."""
    a_exp, eta = 0.5, 0.5
    server = serve_in_thread(
        spec(
            tmp_path,
            "a,b,c",
            3,
            buffer_size=2,
            staleness_exponent=a_exp,
            server_learning_rate=eta,
            max_staleness=2,
        )
    )
    a, b, c = (RawClient(server.url, name) for name in "abc")
    w0 = weights(0)
    assert a.join().json()["propose_initial"] is True
    assert a.propose(w0).status_code == 201
    b.join(), c.join()
    # Every client is handed version 0 as round 1: three slots (max_concurrency = N).
    for client in (a, b, c):
        assert fetch(client, 1)[0] == 1
    status = requests.get(f"{server.url}/v1/status", timeout=30).json()
    assert status["mode"] == "async" and status["round"] == 1  # version 1 being made

    wa1, wb1 = weights(11), weights(12)
    assert send(a, 1, wa1, 1)["round"] == 1
    send(b, 1, wb1, 3)
    w1 = next_version(w0, [(wa1, w0, 1, 0), (wb1, w0, 3, 0)], a_exp, eta)
    # a asks for round 2 as the client library does: it waits for version 1.
    got_round, got = fetch(a, 2)
    assert got_round == 2
    assert_weights(got, w1)
    # A resend of b's counted update is a duplicate; it changes nothing.
    resend = b.update(1, wire.encode(wb1), num_examples=3)
    assert resend.status_code == 200 and resend.json()["duplicate"] is True
    assert fetch(b, 2)[0] == 2

    wa2, wb2 = weights(21), weights(22)
    send(a, 2, wa2, 1)
    send(b, 2, wb2, 3)
    w2 = next_version(w1, [(wa2, w1, 1, 0), (wb2, w1, 3, 0)], a_exp, eta)
    got_round, got = fetch(a, 3)
    assert got_round == 3
    assert_weights(got, w2)

    # c still trains on version 0: two versions behind, weighted (1 + 2) ** -0.5.
    wc1, wa3 = weights(31), weights(32)
    send(c, 1, wc1, 2)
    send(a, 3, wa3, 1)
    w3 = next_version(w2, [(wc1, w0, 2, 2), (wa3, w2, 1, 0)], a_exp, eta)

    result = finish(server, [a, b, c], [4, 3, 2])
    assert_weights(wire.decode(result.weights_path.read_bytes()), w3)
    history = result.history
    assert history["mode"] == "async"
    assert history["async"] == {
        "buffer_size": 2,
        "staleness_exponent": a_exp,
        "max_staleness": 2,
        "server_learning_rate": eta,
    }
    versions = history["rounds"][1:]
    assert [v["round"] for v in versions] == [1, 2, 3]
    assert [v["contributors"] for v in versions] == [["a", "b"], ["a", "b"], ["a", "c"]]
    assert [v["base_versions"] for v in versions] == [
        {"a": 0, "b": 0},
        {"a": 1, "b": 1},
        {"a": 2, "c": 0},
    ]
    assert [v["staleness"] for v in versions] == [
        {"a": 0, "b": 0},
        {"a": 0, "b": 0},
        {"a": 0, "c": 2},
    ]
    assert [v["num_examples"] for v in versions] == [4, 4, 3]
    assert all(v["duration_s"] >= 0 for v in versions)


def test_too_stale_updates_are_refused_and_the_model_unchanged(tmp_path):
    """max_staleness = 1, K = 1: b's update on version 0 arrives when version 2 exists."""
    server = serve_in_thread(spec(tmp_path, "a,b", 3, buffer_size=1, max_staleness=1))
    a, b = RawClient(server.url, "a"), RawClient(server.url, "b")
    w0 = weights(0)
    a.join(), b.join()
    assert a.propose(w0).status_code == 201
    assert fetch(b, 1)[0] == 1
    assert fetch(a, 1)[0] == 1
    send(a, 1, weights(1), 1)
    assert fetch(a, 2)[0] == 2
    send(a, 2, weights(2), 1)
    got_round, w2 = fetch(a, 3)
    assert got_round == 3
    refused = b.update(1, wire.encode(weights(9)), num_examples=1)
    assert refused.status_code == 409
    body = refused.json()
    assert body["error"] == "wrong_round"
    reason = (
        "update based on version 0 is 2 versions behind the current version 2 (max_staleness=1)"
    )
    assert body["message"] == reason
    # b moves on to the newest model; the refused update changed nothing.
    b_round, b_model = fetch(b, 2)
    assert b_round == 3
    assert_weights(b_model, w2)
    send(a, 3, weights(3), 1)
    result = finish(server, [a, b], [4, 4])
    assert_weights(wire.decode(result.weights_path.read_bytes()), weights(3))
    version3 = result.history["rounds"][3]
    assert version3["refused"] == [{"client": "b", "reason": reason}]
    assert version3["contributors"] == ["a"]


def test_median_and_krum_are_refused_in_async_mode():
    params = AsyncParams()
    for name in ("fedmedian", "fedtrimmedavg", "krum", "multikrum"):
        with pytest.raises(ValueError, match="compares one round's updates with each other"):
            strategies.build(name, {}, num_clients=4, min_clients=4, asynchronous=params)
    strategies.build("fedadam", {}, num_clients=4, min_clients=4, asynchronous=params)


def test_concurrency_cap_holds_clients_until_a_slot_frees(tmp_path):
    """fraction_fit = 0.5 of N = 4: two slots; a third client waits for a freed one."""
    server = serve_in_thread(
        {
            **spec(tmp_path, "a,b,c,d", 2, buffer_size=1),
            "strategy_options": {"fraction_fit": 0.5},
        }
    )
    a, b, c, d = (RawClient(server.url, name) for name in "abcd")
    for client in (a, b, c, d):
        client.join()
    assert a.propose(weights(0)).status_code == 201
    assert fetch(a, 1)[0] == 1
    assert fetch(b, 1)[0] == 1
    assert c.model(1, wait=0.2).status_code == 204  # both slots taken
    send(a, 1, weights(1), 1)  # version 1; a's slot is free
    assert fetch(c, 1)[0] == 2  # c trains on version 1
    assert a.model(2, wait=0.2).status_code == 204
    send(b, 1, weights(2), 1)  # version 2 (b one version stale): the run is over
    late = c.update(2, wire.encode(weights(3)), num_examples=1)
    assert late.status_code == 409 and late.json()["error"] == "wrong_round"
    assert late.json()["message"] == "the run has finished with version 2; fetch the final model"
    result = finish(server, [a, b, c, d], [2, 2, 2, 1])
    versions = result.history["rounds"][1:]
    assert [v["staleness"] for v in versions] == [{"a": 0}, {"b": 1}]


def test_a_version_is_made_at_round_timeout_from_min_clients_updates(tmp_path):
    """K = N = 3, min_clients = 2: two updates within round_timeout make the version."""
    server = serve_in_thread({**spec(tmp_path, "a,b,c", 1), "min_clients": 2, "round_timeout": 1.0})
    a, b, c = (RawClient(server.url, name) for name in "abc")
    for client in (a, b, c):
        client.join()
    assert a.propose(weights(0)).status_code == 201
    assert fetch(a, 1)[0] == 1 and fetch(b, 1)[0] == 1
    send(a, 1, weights(1), 1)
    send(b, 1, weights(2), 3)
    result = finish(server, [a, b, c], [2, 2, 1])
    version = result.history["rounds"][1]
    assert version["contributors"] == ["a", "b"]
    assert version["duration_s"] >= 1.0
    w1 = next_version(
        weights(0), [(weights(1), weights(0), 1, 0), (weights(2), weights(0), 3, 0)], 0.5, 1.0
    )
    assert_weights(wire.decode(result.weights_path.read_bytes()), w1)


def test_too_few_updates_at_round_timeout_fail_the_run(tmp_path):
    server = serve_in_thread(
        {**spec(tmp_path, "a,b,c", 1), "min_clients": 2, "round_timeout": 1.0, "grace_period": 1.0}
    )
    a, b, c = (RawClient(server.url, name) for name in "abc")
    for client in (a, b, c):
        client.join()
    assert a.propose(weights(0)).status_code == 201
    assert fetch(a, 1)[0] == 1
    send(a, 1, weights(1), 1)
    result = server.wait(TIMEOUT)
    assert not result.ok
    assert result.error.startswith(
        "version 1: only 1 of buffer_size=3 updates came within round_timeout=1s (at least "
        "min(min_clients, buffer_size)=2 needed)"
    ), result.error


def test_dp_counts_a_version_with_rate_k_over_n_and_versions_are_evaluated(tmp_path):
    server = serve_in_thread(
        {
            **spec(tmp_path, "a,b", 2, buffer_size=1),
            "strategy_options": {"noise_multiplier": 0.0, "clipping_norm": 100.0},
        }
    )
    a, b = RawClient(server.url, "a"), RawClient(server.url, "b")
    a.join(), b.join()
    assert a.propose(weights(0)).status_code == 201
    for version in (0, 1):
        response = a.model(version + 1, wait=TIMEOUT)
        assert response.headers["X-FL-Round"] == str(version + 1)
        assert json.loads(response.headers["X-FL-Config"])["evaluate"] is True
        evaluation = a.evaluate(version, 5, {"loss": float(version)})
        assert evaluation.status_code == 200, evaluation.text
        send(a, version + 1, weights(version + 1), 2)
    result = finish(server, [a, b], [3, 1])
    assert result.history["strategy"] == "fedavg+dp"
    for record in result.history["rounds"][1:]:
        assert record["strategy"]["dp"]["sampling_rate"] == 0.5
    assert [r["evaluate"]["metrics"] for r in result.history["rounds"][:2]] == [
        {"loss": 0.0},
        {"loss": 1.0},
    ]
    # noise 0, a clipping norm far above the changes: version 2 is a's update exactly.
    assert_weights(wire.decode(result.weights_path.read_bytes()), weights(2))


def test_per_client_credentials_and_a_revocation_that_frees_its_slot(tmp_path):
    """One slot: a holds it; b's token cannot act as a; revoking a frees the slot for b."""
    registry_path = tmp_path / "registry.json"
    registry, (cred_a, cred_b) = issue_many(["a", "b"])
    registry.save(registry_path)
    server = serve_in_thread(
        {
            **spec(tmp_path, "a,b", 1, buffer_size=1, max_concurrency=1),
            "credentials": str(registry_path),
            "credentials_reload": 0.1,
        }
    )
    a = RawClient(server.url, "a", headers={"Authorization": cred_a.authorization})
    b = RawClient(server.url, "b", headers={"Authorization": cred_b.authorization})
    a.join(), b.join()
    assert a.propose(weights(0)).status_code == 201
    assert fetch(a, 1)[0] == 1
    assert b.model(1, wait=0.2).status_code == 204  # the one slot is a's
    impostor = RawClient(server.url, "a", headers={"Authorization": cred_b.authorization})
    assert impostor.update(1, wire.encode(weights(9)), num_examples=1).status_code == 403
    registry.revoke("a").save(registry_path)
    assert fetch(b, 1)[0] == 1  # a's slot went with its credential
    send(b, 1, weights(2), 1)
    assert a.update(1, wire.encode(weights(1)), num_examples=1).status_code == 401
    result = finish(server, [b], [2])
    assert result.history["revoked"] == ["a"]
    assert result.history["rounds"][1]["contributors"] == ["b"]
    assert_weights(wire.decode(result.weights_path.read_bytes()), weights(2))


def test_concurrency_is_ceil_f_n_unless_given():
    assert AsyncParams().concurrency_for(30, 0.1) == 3  # 0.1 * 30 is 3.0000000000000004
    assert AsyncParams().concurrency_for(10, 0.25) == 3
    assert AsyncParams().concurrency_for(10) == 10
    assert AsyncParams(max_concurrency=4).concurrency_for(10, 0.1) == 4
