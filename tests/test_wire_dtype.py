"""Half-precision transfer: --wire-dtype float16/bfloat16 halves the bytes, float32 stays inside."""

from __future__ import annotations

import numpy as np
import pytest

from fl_kubeflow import wire
from fl_kubeflow.client.numpy_trainers import random_weights
from tests.fl_processes import RawClient, start_client, start_delta_clients, start_server, wait_all

SHAPES = [(64, 32), (32,), (7,)]
SHAPES_ARG = ["--shapes", "64x32,32,7"]
W0 = {"w": np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4), "steps": np.arange(3)}


@pytest.mark.parametrize("wire_dtype", ["float16", "bfloat16"])
def test_run_in_half_precision_halves_the_bytes_and_keeps_float32(tmp_path, wire_dtype):
    deltas, counts = [0.5, -0.25], [1, 3]
    server = start_server(tmp_path, "--clients", "2", "--rounds", "2", "--wire-dtype", wire_dtype)
    clients = start_delta_clients(tmp_path, server.url, deltas, counts, *SHAPES_ARG)
    assert wait_all(clients) == [0, 0], [c.log() for c in clients]
    assert server.wait() == 0, server.log()
    initial = random_weights(SHAPES, seed=0)
    step = sum(d * n for d, n in zip(deltas, counts, strict=True)) / sum(counts)
    final = server.final_weights()
    # Each transfer rounds to the wire dtype: 11 (float16) or 8 (bfloat16) significant bits.
    rtol = 2.0**-9 if wire_dtype == "float16" else 2.0**-6
    for name, w0 in initial.items():
        assert final[name].dtype == np.float32
        np.testing.assert_allclose(final[name], w0 + 2 * step, rtol=rtol, atol=rtol)
    full = len(wire.encode(initial))
    for record in server.history()["rounds"][1:]:
        assert record["bytes_out"] / 2 < 0.52 * full
        assert record["bytes_in"] / 2 < 0.52 * full


@pytest.fixture
def half_server(tmp_path):
    """A bfloat16 server for 1 client x 1 round, joined, round 1 open."""
    server = start_server(
        tmp_path,
        "--clients",
        "1",
        "--rounds",
        "1",
        "--wire-dtype",
        "bfloat16",
        "--grace-period",
        "2",
    )
    client = RawClient(server.url, "a")
    client.join()
    assert client.propose(W0).status_code == 201
    yield server, client
    server.kill()


def test_model_is_sent_in_the_wire_dtype_and_says_so(half_server):
    _, client = half_server
    response = client.model(1)
    assert response.headers["X-FL-Wire-Dtype"] == "bfloat16"
    assert len(response.content) < len(wire.encode(W0))
    got = wire.decode(response.content, wire_dtype="bfloat16")
    assert got["w"].dtype == np.float32 and got["steps"].dtype == W0["steps"].dtype
    np.testing.assert_allclose(got["w"], W0["w"], rtol=2.0**-8)


def test_half_server_takes_float32_or_its_dtype_and_refuses_the_other_half(half_server):
    server, client = half_server
    client.model(1)
    refused = client.update(1, wire.encode(W0, wire_dtype="float16"))
    assert refused.status_code == 422 and "float16" in refused.json()["message"]
    accepted = client.update(1, wire.encode(W0))  # full precision is always understood
    assert accepted.status_code == 200, accepted.text
    assert client.model(2).headers["X-FL-Phase"] == "finished"
    client.leave()
    assert server.wait(30) == 0, server.log()
    np.testing.assert_array_equal(server.final_weights()["w"], W0["w"])


def test_float32_server_refuses_half_precision_updates(tmp_path):
    server = start_server(tmp_path, "--clients", "1", "--rounds", "1", "--grace-period", "2")
    try:
        client = RawClient(server.url, "a")
        client.join()
        client.propose(W0)
        assert client.model(1).headers["X-FL-Wire-Dtype"] == "float32"
        bf16 = client.update(1, wire.encode(W0, wire_dtype="bfloat16"))
        assert bf16.status_code == 400 and "bfloat16" in bf16.json()["message"]
        f16 = client.update(1, wire.encode(W0, wire_dtype="float16"))
        assert f16.status_code == 422 and "float16" in f16.json()["message"]
    finally:
        server.kill()


def test_client_can_send_full_precision_to_a_half_server(tmp_path):
    server = start_server(tmp_path, "--clients", "2", "--rounds", "1", "--wire-dtype", "float16")
    clients = [
        start_client(tmp_path, server.url, 0, *SHAPES_ARG, "--delta", "1"),
        start_client(
            tmp_path, server.url, 1, *SHAPES_ARG, "--delta", "1", "--wire-dtype", "float32"
        ),
    ]
    assert wait_all(clients) == [0, 0], [c.log() for c in clients]
    assert server.wait() == 0, server.log()
    record = server.history()["rounds"][1]
    full = len(wire.encode(random_weights(SHAPES, seed=0)))
    assert 1.4 * full < record["bytes_in"] < 1.6 * full  # one half, one full update
