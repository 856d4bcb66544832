"""The /v1 protocol against a real server process, driven request by request.

Each bad input must get its own status and a JSON reason, leave the round's
aggregate untouched, and the run must still finish with the exact FedAvg result.
"""

from __future__ import annotations

import http.client
import json
import math
import struct
import threading
import time

import numpy as np
import pytest
import requests

from fl_kubeflow import wire
from fl_kubeflow.auth import new_token
from tests.fl_processes import RawClient, start_server

W0 = {
    "dense/kernel": np.arange(6, dtype=np.float32).reshape(2, 3),
    "dense/bias": np.zeros(3, dtype=np.float32),
}


def plus(weights, delta):
    return {k: v + np.float32(delta) for k, v in weights.items()}


@pytest.fixture
def run(tmp_path):
    """A server for 2 clients x 1 round, both joined, round 1 open."""
    server = start_server(
        tmp_path,
        "--clients",
        "2",
        "--rounds",
        "1",
        "--client-ids",
        "a,b",
        "--grace-period",
        "2",
        "--round-timeout",
        "60",
        "--max-update-mb",
        "0.01",
    )
    a, b = RawClient(server.url, "a"), RawClient(server.url, "b")
    assert a.join().json()["propose_initial"] is True
    assert a.propose(W0).status_code == 201
    assert b.join().json()["propose_initial"] is False
    assert a.model(1).headers["X-FL-Round"] == "1"
    yield server, a, b
    server.kill()


def finish_and_check(server, a, b):
    """Send the two good updates; the result must be the exact weighted average."""
    assert a.update(1, wire.encode(plus(W0, 1.0)), num_examples=1).status_code == 200
    assert b.update(1, wire.encode(plus(W0, 5.0)), num_examples=3).status_code == 200
    final = b.model(2)
    assert final.headers["X-FL-Phase"] == "finished"
    for c in (a, b):
        c.leave()
    assert server.wait(30) == 0, server.log()
    result = server.final_weights()
    for name, value in W0.items():  # (1*1 + 3*5) / 4 = 4
        np.testing.assert_allclose(result[name], value + 4.0, atol=1e-6)
    history = server.history()
    assert history["rounds"][1]["num_examples"] == 4
    assert history["rounds"][1]["contributors"] == ["a", "b"]
    return history


def expect_error(response: requests.Response, status: int, text: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert "error" in body and text in body["message"], body
    return body


def test_good_run_exact_average(run):
    finish_and_check(*run)


def test_body_not_safetensors(run):
    server, a, b = run
    expect_error(a.update(1, b"hello, not safetensors" * 3), 400, "safetensors")
    history = finish_and_check(server, a, b)
    assert history["rounds"][1]["refused"][0]["client"] == "a"


def test_truncated_body(run):
    _server, a, _ = run
    body = wire.encode(plus(W0, 1.0))
    expect_error(a.update(1, body[: len(body) - 7]), 400, "safetensors")
    finish_and_check(*run)


def test_header_length_larger_than_file(run):
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}})
    body = struct.pack("<Q", len(header)) + header.encode() + b"\x00" * 16
    expect_error(run[1].update(1, body), 400, "safetensors")
    finish_and_check(*run)


@pytest.mark.parametrize(
    ("weights", "text"),
    [
        ({"dense/kernel": W0["dense/kernel"]}, "missing"),
        ({**W0, "extra": np.zeros(1, np.float32)}, "unexpected"),
        ({**W0, "dense/bias": np.zeros(4, np.float32)}, "float32[4]"),
        ({**W0, "dense/bias": np.zeros(3, np.float64)}, "float64[3]"),
    ],
    ids=["missing-tensor", "extra-tensor", "wrong-shape", "wrong-dtype"],
)
def test_update_unlike_global_model(run, weights, text):
    expect_error(run[1].update(1, wire.encode(weights)), 422, text)
    finish_and_check(*run)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values(run, bad):
    weights = plus(W0, 1.0)
    weights["dense/bias"][1] = bad
    body = expect_error(run[1].update(1, wire.encode(weights)), 422, "NaN or Inf")
    assert body["tensor"] == "dense/bias"
    finish_and_check(*run)


@pytest.mark.parametrize("count", ["0", "-5"])
def test_non_positive_example_count(run, count):
    expect_error(run[1].update(1, wire.encode(W0), num_examples=count), 400, "num_examples")
    finish_and_check(*run)


def test_unknown_client(run):
    server, _a, _b = run
    stranger = RawClient(server.url, "mallory")
    expect_error(stranger.update(1, wire.encode(W0)), 403, "has not joined")
    expect_error(stranger.join(), 403, "not one of this run's clients")
    finish_and_check(*run)


def test_future_and_stale_rounds(run):
    _server, a, _b = run
    expect_error(a.update(2, wire.encode(W0)), 409, "has not started")
    expect_error(a.update(0, wire.encode(W0)), 409, "is closed")
    finish_and_check(*run)


def test_body_over_size_limit_gets_413(run):
    big = {"w": np.zeros(20_000, dtype=np.float32)}  # 80 kB > 0.01 MiB
    body = expect_error(run[1].update(1, wire.encode(big)), 413, "max_update_bytes")
    assert body["error"] == "too_large"
    finish_and_check(*run)


@pytest.mark.parametrize(
    ("headers", "text"),
    [
        ({"X-FL-Round": "one"}, "X-FL-Round"),
        ({"X-FL-Num-Examples": "1.5"}, "X-FL-Num-Examples"),
        ({"X-FL-Metrics": "{not json"}, "X-FL-Metrics"),
        ({"X-FL-Metrics": '{"loss": "high"}'}, "loss"),
        ({"X-FL-Metrics": '{"loss": NaN}'}, "not finite"),
        ({"X-FL-Metrics": "[1, 2]"}, "JSON object"),
        ({"X-FL-Client-Id": ""}, "X-FL-Client-Id"),
    ],
    ids=[
        "round",
        "examples",
        "metrics-json",
        "metrics-type",
        "metrics-nan",
        "metrics-list",
        "no-client",
    ],
)
def test_malformed_headers(run, headers, text):
    _server, a, _ = run
    response = a.update(1, wire.encode(plus(W0, 1.0)), extra=headers)
    expect_error(response, 400, text)
    finish_and_check(*run)


def test_resend_is_accepted_once(run):
    server, a, b = run
    body = wire.encode(plus(W0, 1.0))
    first = a.update(1, body, num_examples=1).json()
    again = a.update(1, body, num_examples=1).json()
    assert first == {"accepted": True, "duplicate": False, "round": 1}
    assert again == {"accepted": True, "duplicate": True, "round": 1}
    history = finish_and_check(server, a, b)  # which resends a's update once more
    assert history["rounds"][1]["contributors"] == ["a", "b"]


def test_full_federation_refuses_a_third_client(tmp_path):
    server = start_server(tmp_path, "--clients", "2", "--rounds", "1", "--join-timeout", "30")
    try:
        assert RawClient(server.url, "x").join().status_code == 200
        assert RawClient(server.url, "y").join().status_code == 200
        expect_error(RawClient(server.url, "z").join(), 409, "full")
        # The same client joining again (a restart) is welcome.
        assert RawClient(server.url, "x").join().status_code == 200
        expect_error(RawClient(server.url, "bad id!").join(), 400, "client id")
    finally:
        server.kill()


def test_health_ready_status_and_prometheus(run):
    server, a, b = run
    assert requests.get(f"{server.url}/healthz", timeout=10).json() == {"status": "ok"}
    assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200
    a.update(1, wire.encode(plus(W0, 1.0)), num_examples=1)
    a.update(1, wire.encode(W0), extra={"X-FL-Round": "x"})
    status = requests.get(f"{server.url}/v1/status", timeout=10).json()
    assert status["phase"] == "fit" and status["round"] == 1
    assert status["joined"] == ["a", "b"] and status["submitted"] == ["a"]
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    assert "fl_round 1" in text
    assert "fl_updates_accepted_total 1" in text
    assert 'fl_phase{phase="fit"} 1' in text
    assert "fl_bytes_received_total" in text
    finish_and_check(server, a, b)


def test_long_poll_wakes_when_the_round_opens(tmp_path):
    server = start_server(tmp_path, "--clients", "2", "--rounds", "1", "--grace-period", "2")
    try:
        a, b = RawClient(server.url, "a"), RawClient(server.url, "b")
        a.join()
        a.propose(W0)
        answers: list[requests.Response] = []
        waiter = threading.Thread(target=lambda: answers.append(a.model(1, wait=25)))
        started = time.monotonic()
        waiter.start()
        time.sleep(0.5)
        b.join()  # the second join opens round 1
        waiter.join(30)
        elapsed = time.monotonic() - started
        assert answers and answers[0].status_code == 200
        assert answers[0].headers["X-FL-Round"] == "1"
        assert elapsed < 20, "the long-poll ran to its timeout instead of waking"
        # A client that owes round 1 its update and asks for round 2 (it lost track, e.g.
        # across a server restart) is given round 1 again instead of a wait.
        assert a.model(2, wait=0.2).headers["X-FL-Round"] == "1"
        # Once its update is in, round 2 is not open yet: the long-poll answers 204.
        assert a.update(1, wire.encode(W0)).status_code == 200
        assert a.model(2, wait=0.2).status_code == 204
    finally:
        server.kill()


def test_evaluations_are_weighted_and_recorded(run):
    server, a, b = run
    assert a.evaluate(0, 10, {"accuracy": 0.2}).status_code == 200
    assert b.evaluate(0, 30, {"accuracy": 0.6}).status_code == 200
    assert b.evaluate(0, 30, {"accuracy": 0.6}).json()["duplicate"] is True
    expect_error(a.evaluate(1, 10, {"accuracy": 0.9}), 409, "no global model")
    history = finish_and_check(server, a, b)
    assert history["rounds"][0]["evaluate"]["metrics"]["accuracy"] == pytest.approx(0.5)
    assert history["rounds"][0]["evaluate"]["num_examples"] == 40


def test_chunked_update_without_content_length(run):
    # A body of unknown length is read in pieces up to --max-update-mb.
    _server, a, b = run
    body = wire.encode(plus(W0, 1.0))
    pieces = (body[i : i + 7] for i in range(0, len(body), 7))
    assert a.update(1, pieces, num_examples=1).status_code == 200
    assert b.update(1, wire.encode(plus(W0, 5.0)), num_examples=3).status_code == 200
    assert b.model(2).headers["X-FL-Phase"] == "finished"


def test_chunked_update_over_the_limit(run):
    pieces = (b"\x00" * 4096 for _ in range(4))  # 16 KiB > --max-update-mb 0.01
    expect_error(run[1].update(1, pieces), 413, "max_update_bytes")
    finish_and_check(*run)


@pytest.mark.parametrize("slots", ["2", "0"])
def test_large_bodies_in_memory_or_spooled_are_checked_and_averaged(tmp_path, slots):
    # Bodies from 1 MiB up are received into memory (receive slots) or, with none,
    # mapped from waitress's spool file instead of read: the same checks apply, and
    # the result is exact.
    server = start_server(
        tmp_path,
        *("--clients", "1", "--rounds", "1", "--grace-period", "2", "--receive-slots", slots),
    )
    try:
        client = RawClient(server.url, "a")
        client.join()
        big = {"w": np.arange(600_000, dtype=np.float32), "b": np.ones(3, dtype=np.float32)}
        assert client.propose(big).status_code == 201
        client.model(1)
        bad = plus(big, 1.0)
        bad["w"][599_999] = math.nan
        expect_error(client.update(1, wire.encode(bad)), 422, "NaN or Inf")
        assert client.update(1, wire.encode(plus(big, 2.0))).status_code == 200
        assert client.model(2).headers["X-FL-Phase"] == "finished"
        client.leave()
        assert server.wait(30) == 0, server.log()
        final = server.final_weights()
        np.testing.assert_array_equal(final["w"], big["w"] + np.float32(2.0))
    finally:
        server.kill()


def _refusals(token: str) -> list[tuple[str, str, dict[str, str], bytes, int]]:
    """(method, target, headers, body, status): each kind of refusal the fuzz makes, with a body
    where the fuzz sends one."""
    auth = {"Authorization": f"Bearer {token}", "X-FL-Client-Id": "a"}
    update = {**auth, "X-FL-Round": "1", "X-FL-Num-Examples": "1"}
    return [
        ("POST", "/v1/update", {**update, "Authorization": "Bearer wrong"}, b"\x01" * 2000, 401),
        ("GET", "/v1/model?round=1&wait=0", {"X-FL-Client-Id": "a"}, b"", 401),
        ("POST", "/v1/update", {**update, "X-FL-Round": "x"}, b"\x02" * 2000, 400),
        # Over --max-update-mb, but from a client that has not joined: refused on the
        # headers for that first (401, 403, 409, then the body's size).
        ("POST", "/v1/update", update, b"\x03" * 20_000, 403),
        ("POST", "/v1/join", auth, b"{" * 70_000, 413),  # over the JSON limit
        ("POST", "/v1/join", auth, b"\xff\x00garbage", 400),
        ("GET", "/v1/model?round=44&wait=-1", {**auth, "X-FL-Client-Id": "a b"}, b"", 400),
        ("GET", "/v1/status?since=abc", auth, b"", 400),
        ("DELETE", "/v1/update", auth, b"", 405),
        ("GET", "/v1/nowhere", auth, b"", 404),
    ]


def test_refusals_keep_a_keep_alive_connection_usable(tmp_path):
    """Every refusal, bodies included, is answered in full on a keep-alive connection, which
    then serves the next request: the server never resets it (no unread body left behind)
    unless the answer said ``Connection: close`` (as refusals on the headers do). Every
    ordered pair of refusals is tried."""
    token = new_token()
    server = start_server(
        tmp_path, "--clients", "2", "--max-update-mb", "0.01", "--join-timeout", "120", token=token
    )
    refusals = _refusals(token)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        previous = None
        for first in refusals:
            for this in [first, *refusals]:
                method, target, headers, body, status = this
                sock = conn.sock
                try:
                    conn.request(method, target, body=body or None, headers=headers)
                    response = conn.getresponse()
                    answer = response.read()
                except (ConnectionError, http.client.HTTPException) as exc:
                    raise AssertionError(f"{this[:2]} after {previous}: {exc!r}") from exc
                assert response.status == status, (this[:2], answer)
                assert response.status == 405 or "message" in json.loads(answer), answer
                closes = response.getheader("Connection")
                if previous is not None and sock is not None:
                    # A new socket only where the server said it would close the last one
                    # (a refusal on the headers closes, its body unread, and says so).
                    reused = conn.sock is sock or closes == "close"
                    assert reused or previous[1] == "close", (this[:2], previous)
                previous = (this[:2], closes)
        assert server.proc.poll() is None
    finally:
        conn.close()
        server.kill()
