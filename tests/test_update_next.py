"""An update whose answer is the next round's model (POST /v1/update?next=1&wait=S).

The route's answers through Flask's test client (test_app_routes.py's harness): the
model exactly as GET /v1/model gives it, 202 with the update's JSON when no round opens
within the wait, the refusals. Then real clients over HTTP against an in-process
waitress server: with the addition they long-poll only for round 1; against a server
that ignores ``next`` (an older one) they fall back on the long-poll and finish alike.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from fl_kubeflow import wire
from fl_kubeflow.client.federated_client import FederatedClient
from fl_kubeflow.client.numpy_trainers import DeltaTrainer
from fl_kubeflow.server.app import create_app
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.federation import Federation
from fl_kubeflow.server.http_server import start_http_server
from fl_kubeflow.strategies import FedAvg
from tests.test_app_routes import W0, WAIT, Api, build, expect_error, plus

NEXT = f"next=1&wait={WAIT}"


@pytest.fixture
def two_rounds() -> Iterator[tuple[Api, Api]]:
    """Clients a and b joined, W0 the initial model, round 1 of 2 open."""
    a = build(num_rounds=2)
    b = a.as_client("b")
    assert a.join().json["propose_initial"] is True
    assert a.propose(wire.encode(W0)).status_code == 201
    b.join()
    assert a.model(1).headers["X-FL-Round"] == "1"
    yield a, b


def update(client: Api, server_round: int, body: bytes, query: str, count: int = 1) -> Any:
    headers = client.headers(**{"X-FL-Round": str(server_round), "X-FL-Num-Examples": str(count)})
    return client.http.post(f"/v1/update?{query}", data=body, headers=headers)


def test_the_answer_is_the_next_model_as_its_long_poll_gives_it(
    two_rounds: tuple[Api, Api],
) -> None:
    a, b = two_rounds
    # Round 2 cannot open before b's update: a's answer waits 0 s, then says 202.
    early = update(a, 1, plus(1.0), "next=1&wait=0")
    assert early.status_code == 202
    assert early.json == {"accepted": True, "duplicate": False, "round": 1}
    answer = update(b, 1, plus(5.0), NEXT, count=3)
    assert answer.status_code == 200
    assert answer.mimetype == wire.CONTENT_TYPE
    assert json.loads(answer.headers["X-FL-Update"]) == {
        "accepted": True,
        "duplicate": False,
        "round": 1,
    }
    polled = b.model(2)
    for header in ("X-FL-Round", "X-FL-Phase", "X-FL-Config", "X-FL-Wire-Dtype"):
        assert answer.headers[header] == polled.headers[header], header
    assert answer.headers["X-FL-Round"] == "2"
    assert answer.headers["X-FL-Phase"] == "fit"
    assert answer.data == polled.data
    for name, value in wire.decode(answer.data).items():  # (1 * 1 + 3 * 5) / 4 = 4
        np.testing.assert_allclose(value, W0[name] + 4.0, atol=1e-6)
    # A resend of a counted update is a duplicate, and gets the model it is owed.
    again = update(b, 1, plus(5.0), NEXT, count=3)
    assert json.loads(again.headers["X-FL-Update"])["duplicate"] is True
    assert again.data == polled.data
    # The last round's update is answered with the final model.
    update(a, 2, plus(1.0), "next=1&wait=0")
    final = update(b, 2, plus(1.0), NEXT)
    assert (final.status_code, final.headers["X-FL-Phase"]) == (200, "finished")
    assert final.data == b.model(3).data


@pytest.mark.parametrize(
    ("query", "text"),
    [
        ("next=2", "'next' must be 0 or 1"),
        ("next=1&wait=-1", "'wait'"),
        ("next=1&wait=x", "'wait'"),
    ],
    ids=["next", "negative-wait", "wait-not-a-number"],
)
def test_a_bad_next_or_wait_is_refused_and_counts_nothing(
    two_rounds: tuple[Api, Api], query: str, text: str
) -> None:
    a, b = two_rounds
    expect_error(update(a, 1, plus(9.0), query), 400, "bad_request", text)
    # Refused before the body was read: a's good update still counts, once.
    assert update(a, 1, plus(1.0), "next=0").json["duplicate"] is False
    assert update(b, 1, plus(5.0), NEXT, count=3).headers["X-FL-Round"] == "2"


def test_a_refused_update_gets_its_refusal_not_a_model(two_rounds: tuple[Api, Api]) -> None:
    a, b = two_rounds
    expect_error(update(a, 2, plus(1.0), NEXT), 409, "wrong_round", "has not started")
    expect_error(
        update(a, 1, wire.encode({"x": np.ones(2, np.float32)}), NEXT), 422, "invalid_update"
    )
    update(a, 1, plus(1.0), "next=1&wait=0")
    update(b, 1, plus(1.0), NEXT)
    expect_error(update(a, 1, plus(2.0), NEXT), 409, "conflict", "different update")


# --- real clients over HTTP -------------------------------------------------------------------


class Requests:
    """WSGI middleware counting requests by method and path; ``old`` drops ``next`` from
    the query, so the app answers as a server that does not know it."""

    def __init__(self, app: Callable[..., Any], old: bool) -> None:
        self.app, self.old, self.seen = app, old, Counter[tuple[str, str]]()
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        with self.lock:
            self.seen[environ["REQUEST_METHOD"], environ["PATH_INFO"]] += 1
        if self.old:
            query = environ.get("QUERY_STRING", "").split("&")
            environ["QUERY_STRING"] = "&".join(q for q in query if not q.startswith("next="))
        return self.app(environ, start_response)


@pytest.mark.parametrize("old", [False, True], ids=["next-model", "older-server"])
def test_clients_finish_with_the_exact_average_and_fewer_requests(old: bool) -> None:
    rounds, shapes = 3, [(20, 5), (5,)]
    config = ServerConfig(
        num_clients=2,
        num_rounds=rounds,
        host="127.0.0.1",
        port=0,
        join_timeout=WAIT,
        round_timeout=WAIT,
        grace_period=5.0,
        poll_timeout=WAIT,
    )
    federation = Federation(config, FedAvg())
    counting = Requests(create_app(federation, config), old)
    server = start_http_server(counting, config)
    driver = threading.Thread(target=federation.run, name="federation", daemon=True)
    driver.start()
    summaries: dict[str, Any] = {}

    def client(client_id: str, delta: float) -> None:
        trainer = DeltaTrainer(shapes, delta=delta, num_examples=1 + int(delta))
        url = f"http://127.0.0.1:{server.port}"
        fc = FederatedClient(url, client_id, trainer, retry_timeout=10, round_wait_timeout=WAIT)
        summaries[client_id] = fc.run()

    threads = [threading.Thread(target=client, args=(c, d)) for c, d in (("a", 1.0), ("b", 3.0))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        driver.join(WAIT)
    finally:
        server.close()
    assert not driver.is_alive() and federation.history()["status"] == "finished"
    assert [s.rounds_trained for s in summaries.values()] == [[1, 2, 3]] * 2
    # Each round adds (1 * 2 + 3 * 4) / 6 = 7/3 to every weight.
    final = federation.final_weights()
    assert final is not None
    for name, value in DeltaTrainer(shapes).initial_weights().items():
        np.testing.assert_allclose(final[name], value + rounds * 7 / 3, rtol=1e-5)
    assert counting.seen["POST", "/v1/update"] == 2 * rounds
    # The model long-poll: every round's and the final model's on an older server; with
    # the addition, round 1's alone (the first model comes before any update).
    polls = counting.seen["GET", "/v1/model"]
    assert polls == (2 * (rounds + 1) if old else 2), counting.seen
