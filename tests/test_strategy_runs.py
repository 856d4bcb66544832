"""Strategies wired into real runs: options from the CLI, client sampling, DP reports."""

from __future__ import annotations

import numpy as np

from fl_kubeflow.client.numpy_trainers import random_weights
from fl_kubeflow.strategies import sample_clients
from tests.fl_processes import start_client, start_server, wait_all


def test_fraction_fit_samples_clients_each_round_and_others_wait(tmp_path):
    server = start_server(
        tmp_path,
        "--clients",
        "4",
        "--rounds",
        "4",
        "--min-clients",
        "2",
        "--strategy-option",
        "fraction_fit=0.5",
        "--strategy-option",
        "seed=7",
        "--grace-period",
        "5",
    )
    deltas = [1.0, 2.0, 3.0, 4.0]
    clients = [
        start_client(tmp_path, server.url, i, "--delta", str(d)) for i, d in enumerate(deltas)
    ]
    assert wait_all(clients) == [0, 0, 0, 0], [c.log() for c in clients]
    assert server.wait() == 0, server.log()
    history = server.history()
    ids = ["0", "1", "2", "3"]
    weights = random_weights([(16, 8), (8,)], seed=0)
    for record in history["rounds"][1:]:
        expected = sample_clients(ids, 0.5, 2, 7, record["round"], stream="fit")
        assert record["sampled"] == expected
        assert record["contributors"] == expected  # only the sampled trained
        assert record["timed_out"] == []
        step = np.mean([deltas[int(c)] for c in expected])
        weights = {k: v + np.float32(step) for k, v in weights.items()}
    assert len({tuple(r["sampled"]) for r in history["rounds"][1:]}) > 1  # the draw varies
    final = server.final_weights()
    for name, value in weights.items():
        np.testing.assert_allclose(final[name], value, atol=1e-5)


def test_central_dp_reports_epsilon_every_round(tmp_path):
    server = start_server(
        tmp_path,
        "--clients",
        "2",
        "--rounds",
        "3",
        "--strategy",
        "fedavg",
        "--strategy-option",
        "noise_multiplier=1.0",
        "--strategy-option",
        "clipping_norm=0.5",
        "--strategy-option",
        "clipping=client",
        "--grace-period",
        "5",
    )
    clients = [start_client(tmp_path, server.url, i, "--delta", "1.0") for i in (0, 1)]
    assert wait_all(clients) == [0, 0], [c.log() for c in clients]
    assert server.wait() == 0, server.log()
    history = server.history()
    epsilons = [r["strategy"]["dp"]["epsilon"] for r in history["rounds"][1:]]
    assert all(e > 0 for e in epsilons) and epsilons == sorted(epsilons)
    assert history["strategy_options"]["noise_multiplier"] == 1.0
    # Client-side clipping: each change (norm 1.0 * sqrt(136)) arrived clipped to 0.5.
    assert all(r["strategy"]["dp"]["clipped_updates"] == 0 for r in history["rounds"][1:])
    assert all(r["train"]["clipped"] == 1.0 for r in history["rounds"][1:])


def test_bad_strategy_option_is_a_cli_error(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fl_kubeflow",
            "server",
            "--strategy",
            "krum",
            "--strategy-option",
            "num_malicious=2",
            "--clients",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "num_malicious" in done.stderr
