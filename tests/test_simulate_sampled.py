"""GET /v1/sampled: one long-poll tells a simulation worker which of its clients a round
samples (docs/protocol.md), through Flask's test client as test_app_routes.py does."""

from __future__ import annotations

import threading

from fl_kubeflow import wire
from fl_kubeflow.server.app import create_app
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.federation import Federation
from fl_kubeflow.strategies import FedAvg
from tests.test_app_routes import W0, WAIT, Api, expect_error, plus

IDS = ("a", "b", "c", "d")


def build(num_rounds: int = 2, join_timeout: float = 60.0) -> Api:
    """Four clients, half of them sampled per round (quorum 1), its driver running."""
    config = ServerConfig(
        num_clients=len(IDS),
        num_rounds=num_rounds,
        min_clients=1,
        host="127.0.0.1",
        port=0,
        join_timeout=join_timeout,
        round_timeout=60.0,
        grace_period=1.0,
        poll_timeout=WAIT,
    )
    federation = Federation(config, FedAvg(fraction_fit=0.5, fraction_evaluate=0.5, seed=3))
    threading.Thread(target=federation.run, name="federation", daemon=True).start()
    return Api(create_app(federation, config).test_client(), None)


def sampled(api: Api, server_round: int, wait: float = WAIT) -> tuple[int, dict | None]:
    response = api.get(f"/v1/sampled?round={server_round}&wait={wait}")
    return response.status_code, response.json if response.status_code == 200 else None


def test_each_round_names_its_sample_and_the_end_names_the_final_evaluators() -> None:
    api = build()
    clients = {c: api.as_client(c) for c in IDS}
    assert sampled(api, 1, wait=0) == (204, None)  # nobody joined: no round yet
    for client in clients.values():
        client.join()
    assert clients["a"].propose(wire.encode(W0)).status_code == 201
    for server_round in (1, 2):
        status, body = sampled(api, server_round)
        assert status == 200 and body is not None
        assert (body["round"], body["phase"]) == (server_round, "fit")
        assert len(body["fit"]) == 2 and set(body["fit"]) < set(IDS)
        assert set(body["evaluate"]) <= set(body["fit"])
        # The next round is not open yet: a short wait answers "not yet".
        assert sampled(api, server_round + 1, wait=0) == (204, None)
        for client_id in IDS:  # only the sampled get a model; the others would wait
            answer = clients[client_id].model(server_round, wait=0)
            assert answer.status_code == (200 if client_id in body["fit"] else 204)
        for client_id in body["fit"]:
            assert clients[client_id].update(server_round, plus(1.0)).status_code == 200
    status, body = sampled(api, 3)
    assert status == 200 and body is not None
    assert (body["round"], body["phase"], body["fit"]) == (2, "finished", [])
    assert len(body["evaluate"]) == 2 and set(body["evaluate"]) < set(IDS)
    # An earlier round asked after the end gets the end too: nothing waits for it.
    assert sampled(api, 1, wait=0)[1] == body


def test_a_round_below_one_is_refused() -> None:
    expect_error(build().get("/v1/sampled?round=0"), 400, "bad_request", "at least 1")


def test_a_failed_run_is_said() -> None:
    api = build(join_timeout=0.01)  # nobody joins in time: the run fails at once
    expect_error(api.get(f"/v1/sampled?round=1&wait={WAIT}"), 409, "run_failed", "join_timeout")
