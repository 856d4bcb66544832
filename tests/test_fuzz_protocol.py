"""Property-based fuzzing of the /v1 protocol, interleaved with a real run.

Over a thousand generated malformed requests (bodies, headers, tokens, rounds,
shapes, dtypes, sizes) hit the server while two real clients train. None may get
a 5xx or hang, and the run's final weights must equal those of the same run
without the garbage.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fl_kubeflow import wire
from fl_kubeflow.auth import new_token
from fl_kubeflow.client.numpy_trainers import random_weights
from tests.fl_processes import start_delta_clients, start_server, wait_all

pytestmark = pytest.mark.slow

SHAPES = [(16, 8), (8,)]
REAL_IDS = ("0", "1")
EXAMPLES = 1100


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


def test_garbage_interleaved_with_a_real_run(tmp_path):
    token = new_token()
    deltas, counts = [1.0, -0.5], [2, 6]
    server = start_server(
        tmp_path,
        "--clients",
        "2",
        "--rounds",
        "3",
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
    clients = start_delta_clients(
        tmp_path, server.url, deltas, counts, "--fit-delay", "3.0", token=token
    )
    session = requests.Session()
    statuses: dict[int, int] = {}
    previous: list = []

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(st.data())
    def fuzz(data):
        method, path, headers, body, params = data.draw(garbage_requests(token))
        if server.proc.poll() is not None:
            return  # the run ended; later examples have nobody to talk to
        try:
            response = session.request(
                method, server.url + path, headers=headers, data=body, params=params, timeout=10
            )
        except requests.ConnectionError as exc:
            assert server.proc.poll() is not None, (
                f"the server dropped a connection: {exc}\nprevious: {previous}\n"
                f"this: {(method, path, headers, body[:200], params)}"
            )
            return
        finally:
            previous[:] = [(method, path, headers, body[:200], params)]
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (method, path, headers, response.text)
        if response.status_code >= 400 and response.status_code != 405:
            assert "message" in response.json() or response.status_code == 413

    fuzz()
    assert sum(statuses.values()) >= 1000, statuses
    assert wait_all(clients) == [0, 0], [c.log() for c in clients]
    assert server.wait() == 0, server.log()
    step = sum(d * n for d, n in zip(deltas, counts, strict=True)) / sum(counts)
    final = server.final_weights()
    for name, w0 in random_weights(SHAPES, seed=0).items():
        np.testing.assert_allclose(final[name], w0 + 3 * step, atol=1e-6)
    assert all(r["contributors"] == list(REAL_IDS) for r in server.history()["rounds"][1:])
