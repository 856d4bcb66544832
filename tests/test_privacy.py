"""Central DP: the clipping bound, the noise scale, and epsilon against dp-accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_kubeflow import strategies
from fl_kubeflow.client.clipping import ClippingTrainer, clip_for_config
from fl_kubeflow.client.numpy_trainers import DeltaTrainer
from fl_kubeflow.privacy.clipping import clip_delta, clip_weights, l2_norm
from fl_kubeflow.strategies.dp_fixed_clipping import DPFixedClipping
from fl_kubeflow.strategies.fedavg import FedAvg, WeightedSum
from fl_kubeflow.wire import Weights

dp_accounting = pytest.importorskip("dp_accounting")
from dp_accounting import rdp  # noqa: E402


def run_round(strategy, server_round, global_weights, updates):
    agg = strategy.start_round(server_round, global_weights)
    for update, n in updates:
        agg.add(update, n)
    return strategy.finish_round(server_round, global_weights, agg.result())


# ------------------------------------------------------------------ clipping


def test_clip_by_hand_over_all_tensors():
    g = {"a": np.zeros(2, np.float32), "b": np.zeros(1, np.float32)}
    u = {"a": np.array([3.0, 0.0], np.float32), "b": np.array([4.0], np.float32)}
    # The change (3, 0, 4) has norm 5 over both tensors; C = 1 scales it by 1/5.
    clipped, norm = clip_weights(u, g, 1.0)
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0], atol=1e-7)
    np.testing.assert_allclose(clipped["b"], [0.8], atol=1e-7)
    assert clipped["a"].dtype == np.float32
    unchanged, _ = clip_weights(u, g, 10.0)
    np.testing.assert_array_equal(unchanged["a"], u["a"])


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=1, max_size=40
    ),
    clipping_norm=st.floats(1e-3, 1e3),
)
def test_clipping_bound_holds_and_keeps_direction(values, clipping_norm):
    delta = {"t": np.array(values, np.float64)}
    clipped, norm = clip_delta(delta, clipping_norm)
    assert l2_norm(clipped) <= clipping_norm * (1 + 1e-12)
    if norm <= clipping_norm:
        np.testing.assert_array_equal(clipped["t"], delta["t"])
    elif norm > 0:
        # Same direction: a positive multiple of the original.
        # (atol: a subnormal coordinate may underflow to 0 when scaled down)
        np.testing.assert_allclose(
            clipped["t"] * norm / clipping_norm, delta["t"], rtol=1e-9, atol=1e-300
        )


class RecordingSum(WeightedSum):
    """A real FedAvg accumulator that also keeps what it was given (to inspect each update)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Weights, int]] = []

    def _add(self, weights, num_examples, client_id=None):
        self.seen.append((weights, num_examples))
        super()._add(weights, num_examples, client_id)


class RecordingFedAvg(FedAvg):
    name = "fedavg"

    def start_round(self, server_round, global_weights):
        self.last = RecordingSum()
        return self.last


def test_every_update_reaching_the_average_is_clipped():
    inner = RecordingFedAvg()
    s = DPFixedClipping(inner, noise_multiplier=0.0, clipping_norm=0.5)
    rng = np.random.default_rng(1)
    g = {"a": rng.standard_normal((8, 4)).astype(np.float32), "b": np.zeros(4, np.float32)}
    scales = [1e-3, 0.1, 0.4, 1.0, 7.0, 1e4]
    updates = [
        ({k: (v + s_ * rng.standard_normal(v.shape)).astype(np.float32) for k, v in g.items()}, 9)
        for s_ in scales
    ]
    run_round(s, 1, g, updates)
    assert len(inner.last.seen) == len(scales)
    for seen, n in inner.last.seen:
        assert n == 1  # equal weights: the noise is sized for C / m per client
        change = {k: seen[k] - g[k].astype(np.float64) for k in g}
        assert l2_norm(change) <= 0.5 * (1 + 1e-9)
    report = s.round_report(1)["dp"]
    assert report["updates"] == 6
    assert report["max_clipped_norm"] <= 0.5 * (1 + 1e-9)
    assert report["clipped_updates"] == sum(
        l2_norm({k: u[k].astype(np.float64) - g[k] for k in g}) > 0.5 for u, _ in updates
    )


def test_clipped_equal_weight_mean_by_hand():
    s = strategies.create("fedavg", noise_multiplier=0.0, clipping_norm=1.0)
    g = {"a": np.zeros(2, np.float32)}
    # (3, 4) has norm 5 -> (0.6, 0.8); (0.3, 0.4) has norm 0.5 -> kept. Equal weights, although
    # the first claims 100 examples: ((0.6, 0.8) + (0.3, 0.4)) / 2 = (0.45, 0.6).
    out = run_round(
        s,
        1,
        g,
        [({"a": np.array([3.0, 4.0], np.float32)}, 100), ({"a": np.array([0.3, 0.4])}, 1)],
    )
    np.testing.assert_allclose(out["a"], [0.45, 0.6], atol=1e-7)
    assert s.round_report(1)["dp"]["clipped_updates"] == 1
    assert s.round_report(1)["dp"]["epsilon"] is None  # no noise: no finite epsilon


# ------------------------------------------------------------------ noise


def test_noise_std_is_z_times_c_on_the_sum():
    z, c, m, size = 1.5, 2.0, 4, 200_000
    s = strategies.create("fedavg", noise_multiplier=z, clipping_norm=c)
    g = {"a": np.zeros(size, np.float64)}
    out = run_round(s, 1, g, [(g, 1)] * m)  # zero changes: the output is the noise alone
    noise_on_mean = out["a"]
    # Std of the noise on the sum is z*C = 3, on the mean of m = 4 updates 0.75. With 200k
    # draws the sample std's relative standard error is 1/sqrt(2 * 200k) = 0.16%.
    assert np.std(noise_on_mean) * m == pytest.approx(z * c, rel=0.01)
    assert abs(np.mean(noise_on_mean)) < 5 * 0.75 / math.sqrt(size)
    assert s.round_report(1)["dp"]["noise_std"] == pytest.approx(0.75)
    again = run_round(s, 2, g, [(g, 1)] * m)
    assert not np.array_equal(again["a"], noise_on_mean)  # fresh noise every round


def test_noise_goes_before_the_server_optimizer():
    # FedAvgM with C large enough not to clip and z = 0 is plain FedAvgM (with equal weights).
    dp = strategies.create("fedavgm", momentum=0.5, noise_multiplier=0.0, clipping_norm=100.0)
    plain = strategies.create("fedavgm", momentum=0.5)
    x = {"a": np.array([1.0, -1.0], np.float32)}
    y = dict(x)
    for r, delta in enumerate([0.3, -0.1, 0.2], 1):
        ups = [({"a": x["a"] + delta}, 1), ({"a": x["a"] - 2 * delta}, 1)]
        x = run_round(dp, r, x, ups)
        y = run_round(plain, r, y, [({"a": y["a"] + delta}, 1), ({"a": y["a"] - 2 * delta}, 1)])
    np.testing.assert_allclose(x["a"], y["a"], atol=1e-6)
    assert dp.state_dict()["inner"]["velocity"]


# ------------------------------------------------------------------ accounting


def library_epsilon(z: float, rates: list[float], delta: float) -> float:
    accountant = rdp.RdpAccountant()
    for q in rates:
        gaussian = dp_accounting.GaussianDpEvent(z)
        accountant.compose(
            gaussian if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, gaussian)
        )
    return accountant.get_epsilon(delta)


def test_epsilon_per_round_matches_dp_accounting():
    z, delta = 1.1, 1e-5
    s = strategies.create(
        "fedavg", noise_multiplier=z, clipping_norm=1.0, target_delta=delta, fraction_fit=0.2
    )
    ids = [str(i) for i in range(10)]
    g = {"a": np.zeros(3, np.float32)}
    reported = []
    for r in range(1, 4):
        chosen = s.sample_fit(r, ids, 1)
        assert len(chosen) == 2  # q = 2 / 10
        run_round(s, r, g, [(g, 1)] * len(chosen))
        report = s.round_report(r)["dp"]
        assert report["sampling_rate"] == 0.2 and report["delta"] == delta
        reported.append(report["epsilon"])
    expected = [library_epsilon(z, [0.2] * r, delta) for r in (1, 2, 3)]
    assert reported == pytest.approx(expected, rel=1e-9)
    assert reported[0] < reported[1] < reported[2]


def test_epsilon_without_sampling_is_the_gaussian_mechanism():
    z, delta = 1.0, 1e-5
    s = strategies.create("fedavg", noise_multiplier=z, clipping_norm=1.0, target_delta=delta)
    g = {"a": np.zeros(1, np.float32)}
    run_round(s, 1, g, [(g, 1)])  # the server never called sample_fit: q = 1
    eps = s.round_report(1)["dp"]["epsilon"]
    assert eps == pytest.approx(library_epsilon(z, [1.0], delta), rel=1e-9)
    # Hand check: the Gaussian mechanism has RDP alpha / (2 z^2); the classic conversion
    # min_alpha alpha/2 + ln(1/delta)/(alpha - 1) is at alpha = 1 + sqrt(2 ln 1e5) = 5.80,
    # giving 2.90 + 2.40 = 5.30. The library's conversion is tighter, never looser.
    classic = min(a / 2 + math.log(1 / delta) / (a - 1) for a in np.linspace(1.01, 50, 5000))
    assert classic == pytest.approx(5.298, abs=0.01)
    assert 3.0 < eps <= classic


def test_accountant_state_survives_a_restart():
    def make():
        return strategies.create("fedavg", noise_multiplier=0.8, clipping_norm=1.0)

    g = {"a": np.zeros(1, np.float32)}
    first = make()
    run_round(first, 1, g, [(g, 1)])
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    run_round(resumed, 2, g, [(g, 1)])
    assert resumed.round_report(2)["dp"]["epsilon"] == pytest.approx(
        library_epsilon(0.8, [1.0, 1.0], 1e-5)
    )
    assert resumed.round_report(2)["dp"]["rounds_accounted"] == 2


# ------------------------------------------------------------------ options and client side


def test_dp_options_are_checked():
    with pytest.raises(ValueError, match="averaging strategy"):
        strategies.create("krum", noise_multiplier=1.0, clipping_norm=1.0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        strategies.create("fedavg", clipping_norm=1.0)
    with pytest.raises(ValueError, match="clipping_norm"):
        strategies.create("fedavg", noise_multiplier=1.0, clipping_norm=0)
    with pytest.raises(ValueError, match="clipping"):
        strategies.create("fedavg", noise_multiplier=1.0, clipping_norm=1, clipping="both")
    with pytest.raises(ValueError, match="target_delta"):
        strategies.create("fedavg", noise_multiplier=1.0, clipping_norm=1, target_delta=1)
    s = strategies.create("fedprox", proximal_mu=0.1, noise_multiplier=1.0, clipping_norm=2.0)
    assert s.name == "fedprox+dp"
    assert s.configure_fit(1) == {"proximal_mu": 0.1}  # server-side clipping: clients not told


def test_client_side_clipping():
    s = strategies.create(
        "fedavg", noise_multiplier=0.0, clipping_norm=0.5, clipping="client", seed=0
    )
    config = s.configure_fit(1)
    assert config == {"dp_clipping_norm": 0.5}
    trainer = ClippingTrainer(DeltaTrainer(shapes=[(3, 2), (2,)], delta=1.0))
    g = trainer.initial_weights()
    result = trainer.fit(g, 1, config)
    # Every one of the 8 weights moved by 1: norm sqrt(8) = 2.83, clipped to 0.5.
    assert result.metrics["update_norm"] == pytest.approx(math.sqrt(8), rel=1e-6)
    change = {k: result.weights[k].astype(np.float64) - g[k] for k in g}
    assert l2_norm(change) == pytest.approx(0.5, rel=1e-5)
    # The server clips again and counts only updates that arrived over the bound.
    unclipped = DeltaTrainer(shapes=[(3, 2), (2,)], delta=1.0).fit(g, 1, config).weights
    run_round(s, 1, g, [(result.weights, 1), (unclipped, 1)])
    assert s.round_report(1)["dp"]["clipped_updates"] == 1
    assert clip_for_config(g, g, {}) == (g, {})
