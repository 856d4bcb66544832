"""Property-based fuzzing of the /v1 protocol, interleaved with a real run.

Over a thousand generated malformed requests (bodies, headers, tokens, rounds,
shapes, dtypes, sizes) hit the server while two real client processes train. None
may get a 5xx, hang or lose its connection, and the run's final weights must equal
those of the same run without the garbage.

The run is paced by the fuzz, not by the clock: a third honest client, the
project's ``FederatedClient`` in a thread of the test, sends its update for round
k < 3 once k thirds of the garbage are sent, and for round 3 once all of it is. No
round can close without it, so every round is open while its share of the garbage
arrives, and the run cannot end (nor the server exit, resetting the connection of
a request in flight) before the last request, however slow the machine.
"""

from __future__ import annotations

import json
import math
import struct
import threading
from typing import Any

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fl_kubeflow import wire
from fl_kubeflow.auth import new_token
from fl_kubeflow.client.federated_client import ClientSummary, FederatedClient
from fl_kubeflow.client.numpy_trainers import DeltaTrainer, random_weights
from fl_kubeflow.client.trainer import FitResult
from tests.fl_processes import start_delta_clients, start_server, wait_all

pytestmark = pytest.mark.slow

SHAPES = [(16, 8), (8,)]
PROCESS_IDS = ("0", "1")  # real client processes
PACER_ID = "2"  # the honest client in the test that paces the run
REAL_IDS = (*PROCESS_IDS, PACER_ID)
ROUNDS = 3
EXAMPLES = 1100
# Longest wait of the pacer for its share of the garbage: generous, for a loaded machine.
PACE_TIMEOUT = 600.0


def _weights_like(draw, valid_names: bool) -> wire.Weights:
    names = (
        ["t000", "t001"]
        if valid_names
        else draw(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=3, unique=True))
    )
    out = {}
    for name in names:
        shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=3)))
        dtype = draw(st.sampled_from(["float32", "float64", "float16", "int32", "uint8"]))
        out[name] = np.zeros(shape, dtype=dtype)
    return out


@st.composite
def bad_bodies(draw) -> bytes:
    """Bodies that must never be accepted as an update of the real model."""
    kind = draw(st.sampled_from(["bytes", "truncated", "shape", "nan", "header", "empty"]))
    good = wire.encode(
        {
            name: np.ones(shape, np.float32)
            for name, shape in zip(["t000", "t001"], SHAPES, strict=True)
        }
    )
    if kind == "bytes":
        return draw(st.binary(max_size=2048))
    if kind == "truncated":
        return good[: draw(st.integers(0, len(good) - 1))]
    if kind == "shape":
        weights = _weights_like(draw, valid_names=draw(st.booleans()))
        if wire.describe(weights) == {"t000": ((16, 8), "float32"), "t001": ((8,), "float32")}:
            weights["t000"] = np.zeros((1,), np.float32)
        return wire.encode(weights)
    if kind == "nan":
        bad = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        weights = {
            name: np.ones(shape, np.float32)
            for name, shape in zip(["t000", "t001"], SHAPES, strict=True)
        }
        weights["t001"][draw(st.integers(0, 7))] = bad
        return wire.encode(weights)
    if kind == "header":
        header = draw(st.binary(max_size=200))
        length = draw(st.integers(0, 2**64 - 1))
        return struct.pack("<Q", length) + header
    return b""


# Printable ASCII without leading or trailing blanks: what an HTTP client will send.
headers_text = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60
).map(str.strip)


@st.composite
def garbage_requests(draw, token: str):
    """(method, path, headers, body, params): each malformed in at least one way."""
    endpoint = draw(
        st.sampled_from(
            [
                "update",
                "update",
                "update",
                "initial",
                "model",
                "join",
                "evaluate",
                "status",
                "leave",
                "nowhere",
            ]
        )
    )
    auth = draw(st.sampled_from(["right", "right", "right", "wrong", "missing"]))
    headers = {}
    if auth == "right":
        headers["Authorization"] = f"Bearer {token}"
    elif auth == "wrong":
        headers["Authorization"] = "Bearer " + draw(headers_text)
    # A real client id only ever comes with a body or header that must be refused.
    client = draw(st.sampled_from([*REAL_IDS, "9", "stranger", "", "a b", "x" * 70]))
    headers["X-FL-Client-Id"] = client
    body: bytes = b""
    params: dict = {}
    if endpoint == "update":
        headers["X-FL-Round"] = draw(st.one_of(st.integers(-5, 10).map(str), headers_text))
        headers["X-FL-Num-Examples"] = draw(
            st.one_of(st.integers(-3, 10**6).map(str), headers_text)
        )
        headers["X-FL-Metrics"] = draw(
            st.one_of(
                st.just("{}"),
                headers_text,
                st.dictionaries(st.text(max_size=8), st.floats(allow_nan=True), max_size=4).map(
                    lambda d: json.dumps(d)
                ),
            )
        )
        body = draw(bad_bodies())
        return "POST", "/v1/update", headers, body, params
    if endpoint == "initial":
        return "POST", "/v1/initial", headers, draw(bad_bodies()), params
    if endpoint == "model":
        params = {
            "round": draw(st.one_of(st.integers(-3, 50).map(str), headers_text)),
            "wait": draw(st.sampled_from(["0", "0.01", "-1", "nan", "abc"])),
        }
        return "GET", "/v1/model", headers, b"", params
    if endpoint in ("join", "leave", "evaluate"):
        fake = draw(st.sampled_from(["9", "stranger", "", "a b", "x" * 70, "../etc"]))
        payload = draw(
            st.one_of(
                st.just({"client_id": fake}),
                st.just({"client_id": fake, "round": 0, "num_examples": 1, "metrics": {"a": 1}}),
                st.dictionaries(
                    st.text(max_size=10), st.integers() | st.text(max_size=10), max_size=4
                ),
                st.lists(st.integers(), max_size=3),
            )
        )
        raw = json.dumps(payload).encode() if draw(st.booleans()) else draw(st.binary(max_size=64))
        return "POST", f"/v1/{endpoint}", headers, raw, params
    if endpoint == "status":
        return "GET", "/v1/status", headers, b"", {"since": draw(headers_text)}
    return (
        draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"])),
        "/v1/nowhere",
        headers,
        b"",
        params,
    )


class Pace:
    """How much garbage is sent: round k < rounds may close once k / rounds of it is,
    the last round only once the fuzz is over."""

    def __init__(self, examples: int, rounds: int, timeout: float) -> None:
        self.examples = examples
        self.rounds = rounds
        self.timeout = timeout
        self.sent = 0
        self.done = False
        self._changed = threading.Condition()

    def count(self) -> None:
        with self._changed:
            self.sent += 1
            self._changed.notify_all()

    def finish(self) -> None:
        """The fuzz is over (or failed): let every round close."""
        with self._changed:
            self.done = True
            self._changed.notify_all()

    def wait_for_round(self, server_round: int) -> None:
        share = self.examples * server_round // self.rounds
        with self._changed:
            if not self._changed.wait_for(
                lambda: self.done or (server_round < self.rounds and self.sent >= share),
                timeout=self.timeout,
            ):
                raise TimeoutError(f"round {server_round}: {self.sent} of {share} requests sent")


class PacedTrainer:
    """A ``DeltaTrainer`` whose fit of round k waits for the garbage of rounds 1..k."""

    def __init__(self, trainer: DeltaTrainer, pace: Pace) -> None:
        self.trainer = trainer
        self.pace = pace

    def initial_weights(self) -> wire.Weights:
        return self.trainer.initial_weights()

    def fit(self, weights: wire.Weights, server_round: int, config: dict[str, Any]) -> FitResult:
        self.pace.wait_for_round(server_round)
        return self.trainer.fit(weights, server_round, config)

    def evaluate(self, weights: wire.Weights, server_round: int) -> Any:
        return self.trainer.evaluate(weights, server_round)


def _start_pacer(
    url: str, token: str, delta: float, count: int, pace: Pace
) -> tuple[threading.Thread, dict[str, Any]]:
    """Run the pacing client in a thread; its summary or error lands in the dict."""
    trainer = PacedTrainer(DeltaTrainer(SHAPES, delta=delta, num_examples=count), pace)
    client = FederatedClient(
        url,
        PACER_ID,
        trainer,
        retry_timeout=30,
        round_wait_timeout=PACE_TIMEOUT,
        poll_wait=1.0,
        request_timeout=30,
        headers={"Authorization": f"Bearer {token}"},
    )
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["summary"] = client.run()
        except BaseException as exc:  # reported by the test, not lost in the thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="pacer", daemon=True)
    thread.start()
    return thread, outcome


def test_garbage_interleaved_with_a_real_run(tmp_path):
    token = new_token()
    deltas, counts = [1.0, -0.5, 0.5], [2, 6, 4]
    server = start_server(
        tmp_path,
        "--clients",
        str(len(REAL_IDS)),
        "--rounds",
        str(ROUNDS),
        "--client-ids",
        ",".join(REAL_IDS),
        "--grace-period",
        "5",
        "--round-timeout",
        "300",
        "--max-update-mb",
        "0.01",
        "--poll-timeout",
        "1",
        token=token,
    )
    clients = start_delta_clients(tmp_path, server.url, deltas[:-1], counts[:-1], token=token)
    pace = Pace(EXAMPLES, ROUNDS, PACE_TIMEOUT)
    pacer, pacer_outcome = _start_pacer(server.url, token, deltas[-1], counts[-1], pace)
    session = requests.Session()
    statuses: dict[int, int] = {}
    previous: list = []

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(st.data())
    def fuzz(data):
        method, path, headers, body, params = data.draw(garbage_requests(token))
        # The run cannot end before the pacer's last update, sent after the last request:
        # every request meets a live server in an open run, so no drop is excusable.
        try:
            response = session.request(
                method, server.url + path, headers=headers, data=body, params=params, timeout=10
            )
        except requests.RequestException as exc:
            raise AssertionError(
                f"the server dropped a connection: {exc!r}\nprevious: {previous}\n"
                f"this: {(method, path, headers, body[:200], params)}"
            ) from exc
        finally:
            previous[:] = [(method, path, headers, body[:200], params)]
        pace.count()
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (method, path, headers, response.text)
        if response.status_code >= 400 and response.status_code != 405:
            assert "message" in response.json() or response.status_code == 413

    try:
        fuzz()
        # The garbage came while the last round was open: the pacer still holds it.
        status = server.status()
        assert (status["phase"], status["round"]) == ("fit", ROUNDS), status
        assert PACER_ID not in status["submitted"], status
    finally:
        pace.finish()
    assert sum(statuses.values()) >= 1000, statuses
    pacer.join(timeout=120)
    assert not pacer.is_alive(), "the pacing client did not finish"
    assert "error" not in pacer_outcome, pacer_outcome
    assert isinstance(pacer_outcome["summary"], ClientSummary)
    assert wait_all(clients) == [0, 0], [c.log() for c in clients]
    assert server.wait() == 0, server.log()
    step = sum(d * n for d, n in zip(deltas, counts, strict=True)) / sum(counts)
    final = server.final_weights()
    for name, w0 in random_weights(SHAPES, seed=0).items():
        np.testing.assert_allclose(final[name], w0 + ROUNDS * step, atol=1e-6)
    assert all(r["contributors"] == list(REAL_IDS) for r in server.history()["rounds"][1:])
