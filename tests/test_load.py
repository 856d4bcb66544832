"""Load: 200 concurrent clients against one server process complete 3 rounds, no errors."""

from __future__ import annotations

import numpy as np
import pytest

from fl_kubeflow.auth import new_token
from fl_kubeflow.client.numpy_trainers import DeltaTrainer, random_weights
from fl_kubeflow.client.swarm import run_swarm
from tests.fl_processes import start_server

pytestmark = pytest.mark.slow

CLIENTS = 200
SHAPES = [(32, 16), (16,)]


def test_two_hundred_concurrent_clients(tmp_path):
    token = new_token()
    server = start_server(
        tmp_path,
        "--clients",
        str(CLIENTS),
        "--rounds",
        "3",
        "--join-timeout",
        "120",
        "--round-timeout",
        "120",
        "--grace-period",
        "30",
        token=token,
    )
    try:
        result = run_swarm(
            server.url,
            CLIENTS,
            lambda i: DeltaTrainer(SHAPES, delta=float(i % 7), num_examples=1 + i % 5),
            token=token,
            timeout=300,
        )
        assert not result.errors, dict(list(result.errors.items())[:5])
        assert len(result.summaries) == CLIENTS
        assert all(s.rounds_trained == [1, 2, 3] for s in result.summaries.values())
        assert server.wait(120) == 0, server.log()[-2000:]
    finally:
        server.kill()
    history = server.history()
    assert [len(r["contributors"]) for r in history["rounds"][1:]] == [CLIENTS] * 3
    counts = [1 + i % 5 for i in range(CLIENTS)]
    step = sum((i % 7) * n for i, n in enumerate(counts)) / sum(counts)
    final = server.final_weights()
    for name, w0 in random_weights(SHAPES, seed=0).items():
        np.testing.assert_allclose(final[name], w0 + 3 * step, atol=1e-4)
