"""The Byzantine client's command line (``python -m fl_kubeflow.cli.adversarial_cmd``) in a
real run: a server process, one honest client and one attacker, on loopback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from fl_kubeflow.client.adversarial import corrupt
from fl_kubeflow.client.numpy_trainers import random_weights
from fl_kubeflow.strategies import weighted_average
from tests.fl_processes import DEFAULT_TIMEOUT, start_client, start_server, wait_all


def test_attacker_sends_its_corrupted_update(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--clients", "2", "--rounds", "1", "--join-timeout", "60")
    honest = start_client(tmp_path, server.url, 0, "--delta", "1.0")
    log = tmp_path / "attacker.log"
    with log.open("wb") as out:
        attacker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fl_kubeflow.cli.adversarial_cmd",
                "--server",
                server.url,
                "--client-id",
                "1",
                "--num-clients",
                "2",
                "--trainer",
                "numpy-delta",
                "--attack",
                "noise",
                "--attack-scale",
                "10",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    assert attacker.wait(DEFAULT_TIMEOUT) == 0, log.read_text()
    assert wait_all([honest, server]) == [0, 0], server.log()
    assert "round 1: sending a noise update (scale 10)" in log.read_text()
    # Both clients start from seed 0's model; the attacker's numpy-delta trainer adds 0,
    # then the noise attack replaces it (its generator seeded from --seed 0).
    start = random_weights([(16, 8), (8,)], 0)
    honest_update = {name: (value + 1.0).astype(np.float32) for name, value in start.items()}
    attack = corrupt(start, start, "noise", 10.0, np.random.default_rng([0, 0xBAD]))
    expected = weighted_average([(honest_update, 1), (attack, 1)])
    final = server.final_weights()
    for name, value in expected.items():
        np.testing.assert_allclose(final[name], value, rtol=0, atol=1e-6)
