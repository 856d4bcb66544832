"""Strategies under secure aggregation: which rules work on a masked sum, and central DP's noise.

``strategies.build`` is what the CLI, the server task and ``serve`` call: with the run's
SecAggParams it refuses, before anything starts, a rule that needs each update, central
DP that would clip on the server, and a federation the parameters cannot serve.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fl_kubeflow import strategies
from fl_kubeflow.secagg.params import SecAggParams

AVERAGING = ["fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad"]
ROBUST = ["fedmedian", "fedtrimmedavg", "krum", "multikrum"]
DP_CLIENT = {"noise_multiplier": 1.0, "clipping_norm": 0.5, "clipping": "client"}


def build(name: str, options: dict | None = None, *, clients: int = 5, quorum: int | None = None):
    return strategies.build(
        name,
        options or {},
        num_clients=clients,
        min_clients=quorum,
        secure_aggregation=SecAggParams(),
    )


@pytest.mark.parametrize("name", AVERAGING)
def test_averaging_rules_work_on_the_sum_weighted_by_examples(name: str) -> None:
    strategy = build(name)
    assert strategy.secure_weighting == "examples"
    # Their secure aggregate is the unmasked mean itself (server optimizers act in finish_round).
    mean = {"w": np.array([0.25, -1.0], np.float32)}
    assert strategy.secure_aggregate(1, mean, mean, 5) is mean


@pytest.mark.parametrize("name", ROBUST)
def test_rules_that_need_each_update_are_refused_at_start(name: str) -> None:
    with pytest.raises(ValueError, match=rf"strategy '{name}' needs every client's update"):
        build(name, {"num_malicious": 1} if "krum" in name else {}, clients=8)
    # The same rule without secure aggregation is fine.
    strategies.build(name, {}, num_clients=8, min_clients=None)


@pytest.mark.parametrize("name", AVERAGING)
def test_central_dp_needs_client_clipping(name: str) -> None:
    strategy = build(name, DP_CLIENT)
    assert strategy.secure_weighting == "uniform"
    with pytest.raises(ValueError, match=r"clipping='server'.*use clipping=client"):
        build(name, {**DP_CLIENT, "clipping": "server"})


def test_the_parameters_are_checked_against_the_federation() -> None:
    # Too few clients to hide one input in a sum: refused by SecAggParams.check_federation.
    with pytest.raises(ValueError):
        build("fedavg", clients=2)
    # A quorum below the minimum: a round's keys could close with too few.
    with pytest.raises(ValueError, match=r"min_clients=2 under secure aggregation"):
        build("fedavg", clients=5, quorum=2)
    build("fedavg", clients=5, quorum=4)


def test_dp_noise_on_a_known_mean_has_std_z_c_over_count() -> None:
    z, c, m, size = 1.5, 2.0, 4, 200_000
    strategy = build("fedavg", {"noise_multiplier": z, "clipping_norm": c, "clipping": "client"})
    global_weights = {"a": np.zeros(size, np.float32), "n": np.array([7], np.int64)}
    mean = {"a": np.full(size, 0.5, np.float32), "n": np.array([7], np.int64)}
    out = strategy.secure_aggregate(1, global_weights, mean, m)
    noise = out["a"].astype(np.float64) - 0.5
    # z*C on the sum of m clipped changes: 0.75 on their mean. 200k draws: the sample
    # std's relative standard error is 0.16%.
    assert np.std(noise) == pytest.approx(z * c / m, rel=0.01)
    assert abs(np.mean(noise)) < 5 * (z * c / m) / math.sqrt(size)
    assert out["a"].dtype == np.float32 and out["n"].dtype == np.int64
    new_global = strategy.finish_round(1, global_weights, out)
    report = strategy.round_report(1)["dp"]
    assert report["noise_std"] == pytest.approx(z * c / m)
    assert report["updates"] == m and report["clipping"] == "client"
    assert report["clipping_norm"] == c and report["noise_multiplier"] == z
    # The accountant ran as for a plain round: a finite epsilon after one noisy round.
    assert report["rounds_accounted"] == 1 and report["epsilon"] > 0
    np.testing.assert_array_equal(new_global["a"], out["a"])
    again = strategy.secure_aggregate(2, global_weights, mean, m)
    assert not np.array_equal(again["a"], out["a"])  # fresh noise every round


def test_dp_wraps_the_inner_rules_secure_aggregate_then_its_server_optimizer() -> None:
    # z = 0: the aggregate is the inner rule's; FedAvgM's momentum still applies after it.
    dp = build("fedavgm", {**DP_CLIENT, "momentum": 0.5, "noise_multiplier": 0.0})
    plain = build("fedavgm", {"momentum": 0.5})
    g = {"a": np.array([1.0, -1.0], np.float32)}
    mean = {"a": np.array([1.5, -0.5], np.float32)}
    via_dp = dp.finish_round(1, g, dp.secure_aggregate(1, g, mean, 3))
    direct = plain.finish_round(1, g, plain.secure_aggregate(1, g, mean, 3))
    np.testing.assert_allclose(via_dp["a"], direct["a"], atol=1e-7)
    assert dp.round_report(1)["dp"]["noise_std"] == 0.0
