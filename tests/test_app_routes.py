"""Every route and refusal of docs/protocol.md, in this process, through Flask's test client.

The app is built as ``serve`` builds it (``create_app`` over a ``Federation`` whose ``run``
drives it on its own thread), but no socket or waitress is involved, so each case takes
milliseconds: routing, authentication, the error table and the JSON reasons. The same
protocol against a real server process is in test_server_protocol.py and
test_fuzz_protocol.py.

What only a real server can show stays there: waitress's body objects (updates received
straight into memory slots, large bodies mapped from its spool file, refusals from the
headers before the body). Here the body arrives as the WSGI input stream werkzeug
gives every app, which is also the path of small bodies and of cheroot (TLS).
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from fl_kubeflow import wire
from fl_kubeflow.auth import new_token
from fl_kubeflow.server.app import create_app
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.federation import Federation
from fl_kubeflow.strategies import FedAvg

W0 = {
    "dense/kernel": np.arange(6, dtype=np.float32).reshape(2, 3),
    "dense/bias": np.zeros(3, dtype=np.float32),
}
LIMIT = 4096  # max_update_bytes: W0 is ~200 bytes
WAIT = 30.0  # long-polls wake on the round opening; this only bounds a broken run


def plus(delta: float) -> bytes:
    return wire.encode({name: value + np.float32(delta) for name, value in W0.items()})


@dataclass
class Api:
    """The app's test client, speaking for one client id with the run's token."""

    http: FlaskClient
    token: str | None
    client_id: str = "a"

    def as_client(self, client_id: str) -> Api:
        return Api(self.http, self.token, client_id)

    def headers(self, **extra: str) -> dict[str, str]:
        auth = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {**auth, "X-FL-Client-Id": self.client_id, **extra}

    def get(self, path: str, **extra: str) -> TestResponse:
        return self.http.get(path, headers=self.headers(**extra))

    def post_json(self, path: str, body: Any) -> TestResponse:
        return self.http.post(path, json=body, headers=self.headers())

    def join(self) -> TestResponse:
        return self.post_json("/v1/join", {"client_id": self.client_id})

    def propose(self, body: bytes) -> TestResponse:
        return self.http.post("/v1/initial", data=body, headers=self.headers())

    def model(self, server_round: int | str, wait: float | str = WAIT) -> TestResponse:
        return self.get(f"/v1/model?round={server_round}&wait={wait}")

    def update(
        self, server_round: int | str, body: bytes, num_examples: int | str = 1, **extra: str
    ) -> TestResponse:
        headers = {
            "X-FL-Round": str(server_round),
            "X-FL-Num-Examples": str(num_examples),
            "X-FL-Metrics": '{"loss": 0.5}',
            **extra,
        }
        return self.http.post("/v1/update", data=body, headers=self.headers(**headers))

    def evaluate(
        self, server_round: Any, num_examples: Any = 10, metrics: Any = None
    ) -> TestResponse:
        body = {
            "client_id": self.client_id,
            "round": server_round,
            "num_examples": num_examples,
            "metrics": {"accuracy": 0.9} if metrics is None else metrics,
        }
        return self.post_json("/v1/evaluate", body)

    def leave(self) -> TestResponse:
        return self.post_json("/v1/leave", {"client_id": self.client_id})


def build(token: str | None = None, **options: Any) -> Api:
    """The app over a fresh Federation for clients a and b, its driver running."""
    settings: dict[str, Any] = {
        "num_clients": 2,
        "num_rounds": 1,
        "client_ids": ("a", "b"),
        "host": "127.0.0.1",
        "port": 0,
        "max_update_bytes": LIMIT,
        "join_timeout": 60.0,
        "round_timeout": 60.0,
        "grace_period": 1.0,
        "poll_timeout": WAIT,
        "token": token,
        **options,
    }
    config = ServerConfig(**settings)
    federation = Federation(config, FedAvg())
    # A daemon: a test that leaves its run unfinished does not wait for its timeouts.
    threading.Thread(target=federation.run, name="federation", daemon=True).start()
    return Api(create_app(federation, config).test_client(), token)


@pytest.fixture
def fresh() -> Api:
    """Nobody joined yet; the run needs a token."""
    return build(token=new_token())


@pytest.fixture
def open_round(fresh: Api) -> Iterator[tuple[Api, Api]]:
    """Clients a and b joined, a's initial model W0 accepted, round 1 open."""
    a, b = fresh, fresh.as_client("b")
    assert a.join().json["propose_initial"] is True
    assert a.propose(wire.encode(W0)).status_code == 201
    assert b.join().json["propose_initial"] is False
    assert a.model(1).headers["X-FL-Round"] == "1"
    yield a, b


def expect_error(response: TestResponse, status: int, code: str, text: str = "") -> dict:
    """A refusal: this status, a JSON body with this code, a message saying ``text``."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.json
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and text in body["message"], body
    return body


def finish(a: Api, b: Api) -> wire.Weights:
    """The two good updates (a's perhaps again); the final model must be their exact
    weighted average, so no refusal before them touched the round's aggregate."""
    for client, delta, count in ((a, 1.0, 1), (b, 5.0, 3)):
        answer = client.update(1, plus(delta), num_examples=count).json
        assert (answer["accepted"], answer["round"]) == (True, 1), answer
    final = b.model(2)
    assert final.status_code == 200
    assert final.headers["X-FL-Phase"] == "finished"
    weights = wire.decode(final.data)
    for name, value in W0.items():  # (1 * 1 + 3 * 5) / 4 = 4
        np.testing.assert_allclose(weights[name], value + 4.0, atol=1e-6)
    return weights


# --- probes, status, metrics ------------------------------------------------------------------


def test_probes_answer_without_a_token(fresh: Api) -> None:
    anonymous = fresh.http
    assert anonymous.get("/healthz").json == {"status": "ok"}
    ready = anonymous.get("/readyz")
    assert (ready.status_code, ready.json) == (200, {"ready": True, "phase": "waiting"})
    metrics = anonymous.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = metrics.get_data(as_text=True)
    for name in (
        "fl_round 0",
        "fl_rounds_completed 0",
        "fl_clients_joined 0",
        "fl_clients_active 0",
        'fl_phase{phase="waiting"} 1',
        'fl_phase{phase="fit"} 0',
        "fl_updates_accepted_total 0",
        "fl_updates_duplicate_total 0",
        "fl_bytes_received_total 0",
        "fl_bytes_sent_total 0",
    ):
        assert f"\n{name}\n" in f"\n{text}", name


def test_status_and_its_round_records(open_round: tuple[Api, Api]) -> None:
    a, _ = open_round
    status = a.get("/v1/status").json
    assert status["phase"] == "fit"
    assert (status["round"], status["num_rounds"], status["num_clients"]) == (1, 1, 2)
    assert status["min_clients"] == 2
    assert status["joined"] == status["active"] == ["a", "b"]
    assert (status["submitted"], status["completed_rounds"], status["error"]) == ([], 0, None)
    assert "rounds" not in status
    assert a.get("/v1/status?since=0").json["rounds"] == [{"round": 0, "evaluate": None}]
    expect_error(a.get("/v1/status?since=first"), 400, "bad_request", "'since'")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/status"),
        ("POST", "/v1/join"),
        ("POST", "/v1/initial"),
        ("GET", "/v1/model?round=1"),
        ("POST", "/v1/update"),
        ("POST", "/v1/evaluate"),
        ("POST", "/v1/leave"),
        ("GET", "/v1/no-such-route"),
    ],
)
def test_every_v1_route_needs_the_bearer_token(fresh: Api, method: str, path: str) -> None:
    assert fresh.token is not None
    # No header, a wrong token, the right token without "Bearer ": all refused alike.
    for authorization in (None, "Bearer wrong-token-of-the-right-length!!", fresh.token):
        headers = {"Authorization": authorization} if authorization else {}
        response = fresh.http.open(path, method=method, headers=headers)
        expect_error(response, 401, "unauthorized", "bearer token")
    right = fresh.http.open(path, method=method, headers=fresh.headers())
    assert right.status_code != 401, right.json
    metrics = fresh.http.get("/metrics").get_data(as_text=True)
    assert 'fl_requests_rejected_total{reason="unauthorized"} 3' in metrics


def test_an_open_run_needs_no_token() -> None:
    api = build(token=None)
    assert api.http.get("/v1/status").status_code == 200
    assert api.join().status_code == 200


def test_unknown_routes_and_wrong_methods_get_json_reasons(fresh: Api) -> None:
    expect_error(fresh.http.get("/no-such-route"), 404, "not_found")
    expect_error(fresh.http.post("/healthz"), 405, "method_not_allowed")
    expect_error(fresh.get("/v1/join"), 405, "method_not_allowed")
    expect_error(fresh.get("/v1/update"), 405, "method_not_allowed")
    expect_error(fresh.http.delete("/v1/model", headers=fresh.headers()), 405, "method_not_allowed")
    expect_error(fresh.post_json("/v1/status", {}), 405, "method_not_allowed")


def test_a_failed_run_is_not_ready_and_says_why() -> None:
    api = build(token=None, join_timeout=0.2)  # nobody joins: the run fails at once
    deadline = time.monotonic() + WAIT
    while (ready := api.http.get("/readyz")).status_code == 200:
        assert time.monotonic() < deadline, "the run did not fail at its join timeout"
        # Long-polling the status is not part of the protocol: ask again shortly.
        time.sleep(0.05)
    assert (ready.status_code, ready.json) == (503, {"ready": False, "phase": "failed"})
    expect_error(api.join(), 409, "run_failed", "no initial model within join_timeout")
    assert "no initial model" in api.get("/v1/status").json["error"]
    assert 'fl_phase{phase="failed"} 1' in api.http.get("/metrics").get_data(as_text=True)


# --- join, initial model, leave -----------------------------------------------------------------


def test_join_answers_and_welcomes_a_restarted_client(fresh: Api) -> None:
    first = fresh.join()
    assert first.status_code == 200
    assert first.json == {
        "client_id": "a",
        "num_rounds": 1,
        "round": 0,
        "phase": "waiting",
        "propose_initial": True,
    }
    assert fresh.join().json == first.json


@pytest.mark.parametrize(
    ("body", "status", "code", "text"),
    [
        (b"{not json", 400, "bad_request", "JSON object"),
        (b"[1, 2]", 400, "bad_request", "JSON object"),
        (b"{}", 400, "bad_request", "'client_id'"),
        (b'{"client_id": ""}', 400, "bad_request", "'client_id'"),
        (b'{"client_id": 7}', 400, "bad_request", "'client_id'"),
        (b'{"client_id": "no spaces"}', 400, "bad_request", "1-63 characters"),
        (b'{"client_id": "mallory"}', 403, "unknown_client", "not one of this run's clients"),
        (json.dumps({"client_id": "a", "pad": "x" * 70_000}).encode(), 413, "too_large", "JSON"),
    ],
    ids=["not-json", "not-object", "no-id", "empty-id", "number-id", "bad-id", "stranger", "big"],
)
def test_join_refusals(fresh: Api, body: bytes, status: int, code: str, text: str) -> None:
    response = fresh.http.post("/v1/join", data=body, headers=fresh.headers())
    expect_error(response, status, code, text)
    assert fresh.get("/v1/status").json["joined"] == []


def test_a_full_federation_refuses_one_more_client() -> None:
    api = build(token=None, client_ids=None)
    assert api.join().status_code == api.as_client("b").join().status_code == 200
    expect_error(api.as_client("c").join(), 409, "conflict", "the federation is full")


def test_initial_model_first_proposal_wins(fresh: Api) -> None:
    a, b = fresh, fresh.as_client("b")
    expect_error(a.propose(wire.encode(W0)), 403, "unknown_client", "has not joined")
    assert a.join().status_code == b.join().status_code == 200
    expect_error(a.propose(b"not safetensors at all"), 400, "bad_request", "safetensors")
    expect_error(a.propose(wire.encode({})), 400, "bad_request", "no tensors")
    nan = {**W0, "dense/bias": np.array([0, np.nan, 0], np.float32)}
    body = expect_error(a.propose(wire.encode(nan)), 422, "invalid_update", "NaN or Inf")
    assert body["tensor"] == "dense/bias"
    headerless = a.as_client("").propose(wire.encode(W0))
    expect_error(headerless, 400, "bad_request", "X-FL-Client-Id")
    first = a.propose(wire.encode(W0))
    assert (first.status_code, first.json) == (201, {"accepted": True})
    later = b.propose(plus(1.0))
    assert (later.status_code, later.json) == (200, {"accepted": False})
    np.testing.assert_array_equal(wire.decode(a.model(1).data)["dense/kernel"], W0["dense/kernel"])


def test_leave(open_round: tuple[Api, Api]) -> None:
    a, _ = open_round
    expect_error(a.as_client("mallory").leave(), 403, "unknown_client", "has not joined")
    expect_error(a.post_json("/v1/leave", ["a"]), 400, "bad_request", "JSON object")
    response = a.leave()
    assert (response.status_code, response.json) == (200, {"left": True})
    assert a.get("/v1/status").json["active"] == ["b"]


# --- the model long-poll ----------------------------------------------------------------------


def test_model_for_the_open_round(open_round: tuple[Api, Api]) -> None:
    a, _ = open_round
    response = a.model(1)
    assert response.status_code == 200
    assert response.mimetype == wire.CONTENT_TYPE
    assert response.headers["X-FL-Round"] == "1"
    assert response.headers["X-FL-Phase"] == "fit"
    assert response.headers["X-FL-Wire-Dtype"] == "float32"
    assert isinstance(json.loads(response.headers["X-FL-Config"]), dict)
    assert int(response.headers["Content-Length"]) == len(response.data)
    model = wire.decode(response.data)
    for name, value in W0.items():
        np.testing.assert_array_equal(model[name], value)


def test_model_before_any_round_opens_is_a_204_to_ask_again(fresh: Api) -> None:
    fresh.join()
    response = fresh.model(1, wait=0)
    assert (response.status_code, response.data) == (204, b"")
    assert response.headers["Retry-After"] == "0"


@pytest.mark.parametrize(
    ("query", "text"),
    [
        ("", "'round'"),
        ("round=one", "'round' must be an integer"),
        ("round=0", "round must be at least 1"),
        ("round=1&wait=soon", "'wait' must be a number"),
        ("round=1&wait=-1", "'wait' must be >= 0"),
        ("round=1&wait=nan", "'wait' must be >= 0"),
    ],
    ids=["no-round", "round-text", "round-zero", "wait-text", "wait-negative", "wait-nan"],
)
def test_model_query_refusals(open_round: tuple[Api, Api], query: str, text: str) -> None:
    a, b = open_round
    expect_error(a.get(f"/v1/model?{query}"), 400, "bad_request", text)
    finish(a, b)


def test_model_needs_a_joined_client(open_round: tuple[Api, Api]) -> None:
    a, b = open_round
    expect_error(a.as_client("mallory").model(1, wait=0), 403, "unknown_client")
    expect_error(a.get("/v1/model?round=1", **{"X-FL-Client-Id": ""}), 400, "bad_request")
    finish(a, b)


# --- updates ----------------------------------------------------------------------------------


def test_good_updates_give_the_exact_average_and_a_resend_counts_once(
    open_round: tuple[Api, Api],
) -> None:
    a, b = open_round
    assert a.update(1, plus(1.0)).json == {"accepted": True, "duplicate": False, "round": 1}
    again = a.update(1, plus(1.0))
    assert again.json == {"accepted": True, "duplicate": True, "round": 1}
    finish(a, b)  # which sends a's update a third time
    metrics = a.http.get("/metrics").get_data(as_text=True)
    assert "fl_updates_accepted_total 2" in metrics
    assert "fl_updates_duplicate_total 2" in metrics
    assert f"fl_bytes_received_total {2 * len(plus(1.0))}" in metrics


@pytest.mark.parametrize(
    ("headers", "text"),
    [
        ({"X-FL-Round": "one"}, "X-FL-Round"),
        ({"X-FL-Num-Examples": "1.5"}, "X-FL-Num-Examples"),
        ({"X-FL-Num-Examples": "0"}, "num_examples"),
        ({"X-FL-Metrics": "{not json"}, "X-FL-Metrics"),
        ({"X-FL-Metrics": '{"loss": "high"}'}, "loss"),
        ({"X-FL-Metrics": '{"loss": NaN}'}, "not finite"),
        ({"X-FL-Metrics": "[1, 2]"}, "JSON object"),
        ({"X-FL-Metrics": json.dumps({"m": 1.0, "pad": "x" * 5000})}, "at most 4096"),
        ({"X-FL-Client-Id": ""}, "X-FL-Client-Id"),
    ],
    ids=[
        "round",
        "examples",
        "examples-zero",
        "metrics-json",
        "metrics-type",
        "metrics-nan",
        "metrics-list",
        "metrics-long",
        "no-client",
    ],
)
def test_malformed_update_headers(
    open_round: tuple[Api, Api], headers: dict[str, str], text: str
) -> None:
    a, b = open_round
    expect_error(a.update(1, plus(1.0), **headers), 400, "bad_request", text)
    finish(a, b)


def test_update_without_round_header(open_round: tuple[Api, Api]) -> None:
    a, b = open_round
    response = a.http.post(
        "/v1/update", data=plus(1.0), headers=a.headers(**{"X-FL-Num-Examples": "1"})
    )
    expect_error(response, 400, "bad_request", "missing header X-FL-Round")
    finish(a, b)


@pytest.mark.parametrize(
    ("weights", "text", "detail"),
    [
        ({"dense/kernel": W0["dense/kernel"]}, "missing ['dense/bias']", "missing"),
        ({**W0, "extra": np.zeros(1, np.float32)}, "unexpected ['extra']", "unexpected"),
        ({**W0, "dense/bias": np.zeros(4, np.float32)}, "float32[4]", "tensor"),
        ({**W0, "dense/bias": np.zeros(3, np.float64)}, "float64[3]", "tensor"),
        ({**W0, "dense/bias": np.array([0, np.inf, 0], np.float32)}, "NaN or Inf", "tensor"),
    ],
    ids=["missing-tensor", "extra-tensor", "wrong-shape", "wrong-dtype", "infinite"],
)
def test_update_unlike_the_global_model(
    open_round: tuple[Api, Api], weights: wire.Weights, text: str, detail: str
) -> None:
    a, b = open_round
    body = expect_error(a.update(1, wire.encode(weights)), 422, "invalid_update", text)
    assert detail in body
    finish(a, b)


def test_update_bodies_that_are_not_a_model(open_round: tuple[Api, Api]) -> None:
    a, b = open_round
    expect_error(a.update(1, b"hello, not safetensors" * 3), 400, "bad_request", "safetensors")
    good = plus(1.0)
    expect_error(a.update(1, good[:-7]), 400, "bad_request", "safetensors")
    # A body shorter than its Content-Length: werkzeug's input stream refuses it (waitress
    # would not call the app before the whole body arrived).
    short = a.http.post(
        "/v1/update",
        data=good[:-7],
        headers=a.headers(**{"X-FL-Round": "1", "X-FL-Num-Examples": "1"}),
        environ_overrides={"CONTENT_LENGTH": str(len(good))},
    )
    expect_error(short, 400, "bad_request")
    assert a.get("/v1/status").json["submitted"] == []
    finish(a, b)


def test_update_over_the_size_limit_is_413_with_the_limit(open_round: tuple[Api, Api]) -> None:
    a, b = open_round
    big = wire.encode({"w": np.zeros(LIMIT // 4 + 1, np.float32)})
    body = expect_error(a.update(1, big), 413, "too_large", "max_update_bytes")
    assert body["limit"] == LIMIT
    # Chunked (no Content-Length): the size is learnt by reading, and refused the same way.
    chunked = a.http.post(
        "/v1/update",
        input_stream=io.BytesIO(big),
        headers=a.headers(
            **{"X-FL-Round": "1", "X-FL-Num-Examples": "1", "Transfer-Encoding": "chunked"}
        ),
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert expect_error(chunked, 413, "too_large", "max_update_bytes")["limit"] == LIMIT
    finish(a, b)


def test_chunked_update_within_the_limit_is_accepted(open_round: tuple[Api, Api]) -> None:
    a, b = open_round
    response = a.http.post(
        "/v1/update",
        input_stream=io.BytesIO(plus(1.0)),
        headers=a.headers(
            **{"X-FL-Round": "1", "X-FL-Num-Examples": "1", "Transfer-Encoding": "chunked"}
        ),
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.json == {"accepted": True, "duplicate": False, "round": 1}
    finish(a, b)


def test_update_from_a_client_that_has_not_joined(open_round: tuple[Api, Api]) -> None:
    a, b = open_round
    mallory = a.as_client("mallory")
    expect_error(mallory.update(1, plus(1.0)), 403, "unknown_client", "has not joined")
    expect_error(mallory.join(), 403, "unknown_client", "not one of this run's clients")
    finish(a, b)


def test_updates_for_a_future_round_or_a_closed_one(open_round: tuple[Api, Api]) -> None:
    a, b = open_round
    body = expect_error(a.update(2, plus(1.0)), 409, "wrong_round", "has not started")
    assert body["current_round"] == 1
    body = expect_error(a.update(0, plus(1.0)), 409, "wrong_round", "is closed")
    assert body["current_round"] == 1
    finish(a, b)


def test_a_late_update_after_its_round_closed_is_stale() -> None:
    # b leaves during round 1, which then closes with a alone (quorum 1); b comes back late.
    a = build(token=None, num_rounds=2, min_clients=1)
    b = a.as_client("b")
    assert a.join().status_code == b.join().status_code == 200
    assert a.propose(wire.encode(W0)).status_code == 201
    assert a.model(1).headers["X-FL-Round"] == "1"
    assert b.leave().status_code == 200
    assert a.update(1, plus(1.0)).status_code == 200
    assert a.model(2).headers["X-FL-Round"] == "2"
    assert b.join().json["round"] == 2
    reason = "round 1 is closed; the current round is 2"
    body = expect_error(b.update(1, plus(5.0)), 409, "wrong_round", reason)
    assert body["current_round"] == 2
    record = a.get("/v1/status?since=1").json["rounds"][0]
    assert record["contributors"] == ["a"]
    assert record["refused"] == [{"client": "b", "reason": reason}]


# --- evaluations ------------------------------------------------------------------------------


def test_evaluations(open_round: tuple[Api, Api]) -> None:
    a, b = open_round
    accepted = a.evaluate(0, num_examples=10, metrics={"accuracy": 0.5})
    assert accepted.json == {"accepted": True, "duplicate": False, "round": 0}
    assert a.evaluate(0).json["duplicate"] is True
    assert b.evaluate(0, num_examples=30, metrics={"accuracy": 0.9}).status_code == 200
    expect_error(a.evaluate(1), 409, "wrong_round", "no global model to evaluate yet")
    assert a.get("/v1/status").json["last_evaluation"] == {
        "round": 0,
        "num_clients": 2,
        "num_examples": 40,
        "metrics": {"accuracy": pytest.approx(0.8)},
    }
    finish(a, b)


@pytest.mark.parametrize(
    ("fields", "status", "code", "text"),
    [
        ({"round": "0"}, 400, "bad_request", "'round' must be an integer"),
        ({"num_examples": True}, 400, "bad_request", "'num_examples' must be an integer"),
        ({"num_examples": 0}, 400, "bad_request", "num_examples must be a positive"),
        ({"metrics": {"accuracy": "high"}}, 400, "bad_request", "accuracy"),
        ({"metrics": [0.9]}, 400, "bad_request", "JSON object"),
        ({"client_id": "mallory"}, 403, "unknown_client", "has not joined"),
    ],
    ids=["round-text", "examples-bool", "examples-zero", "metric-text", "metrics-list", "stranger"],
)
def test_evaluation_refusals(
    open_round: tuple[Api, Api], fields: dict[str, Any], status: int, code: str, text: str
) -> None:
    a, b = open_round
    body = {"client_id": "a", "round": 0, "num_examples": 10, "metrics": {}, **fields}
    expect_error(a.post_json("/v1/evaluate", body), status, code, text)
    finish(a, b)
