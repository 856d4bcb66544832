"""Refusals an outside test of the server found missing (issue 15), through Flask's test client.

Example counts out of range, resends that differ from the update counted, a client id with
a trailing newline, evaluations after a failed run and junk initial proposals once the start
model is set: each is refused as docs/protocol.md's error table says, and nothing refused
changes the round (``finish`` checks the exact average afterwards). The last test runs a
real server process: a restarted client meeting the resend refusal must go on.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from fl_kubeflow import defaults, wire
from fl_kubeflow.client.federated_client import ClientSummary, FederatedClient, FederationFailed
from fl_kubeflow.client.numpy_trainers import DeltaTrainer, random_weights
from fl_kubeflow.credentials import Registry, issue
from fl_kubeflow.server.app import create_app
from fl_kubeflow.server.config import MAX_EXAMPLES_CEILING, ServerConfig
from fl_kubeflow.server.federation import Federation
from fl_kubeflow.server.identity import Identities
from fl_kubeflow.strategies import FedAvg
from tests.fl_processes import RawClient, start_server
from tests.test_app_routes import W0, WAIT, Api, build, expect_error, finish, plus


def round_one(**options: object) -> tuple[Api, Api]:
    """Clients a and b joined, W0 the start model, round 1 open."""
    a = build(**options)
    b = a.as_client("b")
    assert a.join().status_code == b.join().status_code == 200
    assert a.propose(wire.encode(W0)).status_code == 201
    assert a.model(1).headers["X-FL-Round"] == "1"
    return a, b


def rejections(api: Api, reason: str) -> str:
    metrics = api.http.get("/metrics").get_data(as_text=True)
    line = f'fl_requests_rejected_total{{reason="{reason}"}}'
    return next((row for row in metrics.splitlines() if row.startswith(line)), "")


# --- example counts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "text"),
    [
        ("1" + "0" * 400, "at most 40 digits"),  # was 500 (OverflowError)
        (str(2**63), f"max_examples={defaults.MAX_EXAMPLES}"),  # was accepted
        (str(10**30), f"max_examples={defaults.MAX_EXAMPLES}"),  # was accepted
        (str(defaults.MAX_EXAMPLES + 1), f"max_examples={defaults.MAX_EXAMPLES}"),
        ("0", "positive integer"),
        ("-3", "positive integer"),
        ("1_000", "integer"),
    ],
    ids=["401-digits", "2**63", "10**30", "max+1", "zero", "negative", "underscore"],
)
def test_update_example_counts_out_of_range_are_400(count: str, text: str) -> None:
    a, b = round_one()
    expect_error(a.update(1, plus(9.0), num_examples=count), 400, "bad_request", text)
    finish(a, b)  # the refused update weighs nothing in the average


def test_evaluation_example_counts_out_of_range_are_400() -> None:
    a, b = round_one()
    for count in (10**400, 2**63, defaults.MAX_EXAMPLES + 1):  # 10**400 was accepted
        body = expect_error(a.evaluate(0, num_examples=count), 400, "bad_request", "max_examples")
        assert body["max_examples"] == defaults.MAX_EXAMPLES
    assert a.get("/v1/status").json["last_evaluation"] is None
    assert a.evaluate(0, num_examples=defaults.MAX_EXAMPLES).status_code == 200
    finish(a, b)


def test_the_servers_max_examples_is_configurable() -> None:
    a, b = round_one(max_examples=3)
    expect_error(a.update(1, plus(9.0), num_examples=4), 400, "bad_request", "max_examples=3")
    expect_error(a.evaluate(0, num_examples=4), 400, "bad_request", "max_examples=3")
    finish(a, b)  # which sends counts 1 and 3: both within the limit
    with pytest.raises(ValueError, match="max_examples"):
        ServerConfig(num_clients=1, num_rounds=1, max_examples=MAX_EXAMPLES_CEILING + 1)


def test_fedavg_weights_stay_finite_and_exact_at_the_largest_counts() -> None:
    a, b = round_one(max_examples=MAX_EXAMPLES_CEILING)
    for client, delta in ((a, 1.0), (b, 5.0)):
        response = client.update(1, plus(delta), num_examples=MAX_EXAMPLES_CEILING)
        assert response.json["accepted"] is True, response.json
    weights = wire.decode(b.model(2).data)
    for name, value in W0.items():  # equal weights: (1 + 5) / 2 = 3
        assert np.isfinite(weights[name]).all()
        np.testing.assert_allclose(weights[name], value + 3.0, atol=1e-6)
    assert a.get("/v1/status?since=1").json["rounds"][0]["num_examples"] == 2 * 10**15


def test_a_clients_declared_limit_lowers_the_servers() -> None:
    """``max_examples`` declared at enrolment (the registry) applies to that client alone."""
    a, b = issue("a"), issue("b")
    registry = Registry().enrol(a, max_examples=2).enrol(b, max_examples=10**12)
    config = ServerConfig(
        num_clients=2, num_rounds=1, port=0, client_ids=("a", "b"), join_timeout=60.0
    )
    federation = Federation(config, FedAvg(), initial_weights=dict(W0))
    threading.Thread(target=federation.run, name="federation", daemon=True).start()
    http = create_app(federation, config, Identities(registry)).test_client()
    clients = [Api(http, c.token, c.client_id) for c in (a, b)]
    for client in clients:
        assert client.join().status_code == 200
    assert clients[0].model(1).headers["X-FL-Round"] == "1"
    expect_error(clients[0].update(1, plus(9.0), num_examples=3), 400, "bad_request", "s=2,")
    expect_error(clients[0].evaluate(0, num_examples=3), 400, "bad_request", "max_examples=2")
    # A declared limit above the server's does not raise it.
    too_many = defaults.MAX_EXAMPLES + 1
    body = expect_error(clients[1].evaluate(0, num_examples=too_many), 400, "bad_request")
    assert body["max_examples"] == defaults.MAX_EXAMPLES
    finish(*clients)  # counts 1 and 3: b's 3 is within its limit


# --- resent updates ---------------------------------------------------------------------------


def test_a_resend_is_checked_and_must_repeat_the_update_counted() -> None:
    a, b = round_one()
    assert a.update(1, plus(1.0)).json == {"accepted": True, "duplicate": False, "round": 1}
    # Each of these was answered 200 duplicate before, unchecked.
    expect_error(a.update(1, b"garbage, not safetensors"), 400, "bad_request", "safetensors")
    nan = {**W0, "dense/bias": np.array([0, np.nan, 0], np.float32)}
    expect_error(a.update(1, wire.encode(nan)), 422, "invalid_update", "NaN or Inf")
    expect_error(a.update(1, plus(1.0), num_examples=10**30), 400, "bad_request", "max_examples")
    body = expect_error(a.update(1, plus(7.0)), 409, "conflict", "a different update")
    assert body["round"] == 1
    expect_error(a.update(1, plus(1.0), num_examples=2), 409, "conflict", "X-FL-Num-Examples")
    # An honest retry of the same bytes is still a duplicate.
    again = a.update(1, plus(1.0))
    assert again.json == {"accepted": True, "duplicate": True, "round": 1}
    finish(a, b)  # a's plus(1.0) again, now to a closed round: a duplicate too
    expect_error(a.update(1, plus(2.0)), 409, "conflict", "a different update")
    metrics = a.http.get("/metrics").get_data(as_text=True)
    assert "fl_updates_accepted_total 2" in metrics
    assert "fl_updates_duplicate_total 2" in metrics
    assert rejections(a, "resend_differs").endswith(" 3")
    refused = a.get("/v1/status?since=1").json["rounds"][0]["refused"]
    assert [r["client"] for r in refused] == ["a"] * 6


# --- client ids -------------------------------------------------------------------------------


@pytest.mark.parametrize("client_id", ["x\n", "x\r\n", "\nx", "x y"])
def test_a_client_id_must_be_whole(client_id: str) -> None:
    api = build(client_ids=None)
    response = api.http.post("/v1/join", data=json.dumps({"client_id": client_id}))
    expect_error(response, 400, "bad_request", "1-63 characters")  # "x\n" was accepted
    assert api.get("/v1/status").json["joined"] == []
    with pytest.raises(ValueError, match="not client ids"):
        ServerConfig(num_clients=2, num_rounds=1, client_ids=(client_id, "b"))


# --- after a failed run, and the initial model -------------------------------------------------


def test_after_a_failed_run_evaluations_are_refused_like_everything_else() -> None:
    a, _ = round_one(round_timeout=0.5)  # nobody sends an update: round 1 fails the run
    deadline = time.monotonic() + WAIT
    while a.http.get("/readyz").status_code == 200:
        assert time.monotonic() < deadline, "the run did not fail at its round timeout"
        time.sleep(0.05)  # the readiness probe does not long-poll: ask again shortly
    expect_error(a.model(2), 409, "run_failed", "round_timeout")
    # Was 200 {"accepted": true} while every other call answered 409.
    expect_error(a.evaluate(0), 409, "run_failed", "round_timeout")
    expect_error(a.update(1, plus(1.0)), 409, "run_failed", "round_timeout")
    expect_error(a.propose(wire.encode(W0)), 409, "run_failed", "round_timeout")
    assert a.get("/v1/status").json["last_evaluation"] is None


def test_initial_proposals_are_checked_after_the_start_model_is_set() -> None:
    a, b = round_one()
    # Each of these was answered 200 {"accepted": false} once W0 was set.
    expect_error(b.propose(b"junk"), 400, "bad_request", "safetensors")
    expect_error(b.propose(wire.encode({})), 400, "bad_request", "no tensors")
    nan = {**W0, "dense/bias": np.array([0, np.inf, 0], np.float32)}
    expect_error(b.propose(wire.encode(nan)), 422, "invalid_update", "NaN or Inf")
    lost = b.propose(plus(1.0))  # a model that could have started the run, too late
    assert (lost.status_code, lost.json) == (200, {"accepted": False})
    finish(a, b)  # from W0: no proposal changed the start model


# --- the client, against a real server ----------------------------------------------------------


def test_a_restarted_client_whose_round_was_counted_goes_on(tmp_path: Path) -> None:
    """Its first life's update stands; the retrained one (other bytes) is refused, not fatal."""
    shapes = [(4, 3), (3,)]
    start = random_weights(shapes, seed=0)
    initial = tmp_path / "initial.safetensors"
    initial.write_bytes(wire.encode(start))
    server = start_server(
        tmp_path / "server",
        *("--clients", "2", "--rounds", "1", "--initial-weights", str(initial)),
        *("--join-timeout", "60", "--round-timeout", "60", "--grace-period", "5"),
    )
    timeouts = {"retry_timeout": 30.0, "round_wait_timeout": 60.0}
    try:
        first_life = RawClient(server.url, "0")
        # Client 1 joins now (so round 1 opens) and runs later.
        assert first_life.join().status_code == RawClient(server.url, "1").join().status_code == 200
        assert first_life.model(1).headers["X-FL-Round"] == "1"
        counted = {name: value + np.float32(0.5) for name, value in start.items()}
        assert first_life.update(1, wire.encode(counted)).json()["accepted"] is True
        summaries: dict[str, ClientSummary] = {}

        def run(client_id: str, delta: float) -> None:
            trainer = DeltaTrainer(shapes=shapes, delta=delta)
            summaries[client_id] = FederatedClient(server.url, client_id, trainer, **timeouts).run()

        restarted = threading.Thread(target=run, args=("0", 0.25), daemon=True)
        restarted.start()
        deadline = time.monotonic() + WAIT
        while 'reason="resend_differs"} 1' not in requests.get(f"{server.url}/metrics").text:
            assert restarted.is_alive(), "the restarted client stopped at the refusal"
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)  # /metrics does not long-poll: ask again shortly
        run("1", 1.0)
        restarted.join(WAIT)
        assert server.wait() == 0, server.log()
    finally:
        server.kill()
    assert "0" in summaries, "the restarted client stopped at the resend refusal"
    assert summaries["0"].final_round == summaries["1"].final_round == 1
    assert summaries["0"].rounds_trained == []  # its second life's update did not count
    for name, value in start.items():  # (0.5 + 1.0) / 2: the first life's update stands
        np.testing.assert_allclose(server.final_weights()[name], value + 0.75, atol=1e-6)


def test_a_client_whose_run_failed_before_its_proposal_is_told_so(tmp_path: Path) -> None:
    """409 run_failed to the initial proposal is the run's end (FederationFailed), as elsewhere."""
    server = start_server(tmp_path / "server", "--clients", "2", "--join-timeout", "1")

    class LateProposer(DeltaTrainer):
        def initial_weights(self) -> wire.Weights:
            # Proposes only once the run failed at its join timeout (nobody else joins).
            deadline = time.monotonic() + WAIT
            while requests.get(f"{server.url}/readyz", timeout=5).status_code == 200:
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.05)  # the readiness probe does not long-poll: ask again shortly
            return super().initial_weights()

    client = FederatedClient(server.url, "0", LateProposer(shapes=[(3,)]), retry_timeout=30.0)
    try:
        with pytest.raises(FederationFailed, match="no initial model within join_timeout"):
            client.run()  # was a ServerError: the proposal's 409 was not read as the run's end
    finally:
        server.kill()
