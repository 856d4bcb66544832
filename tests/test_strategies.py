"""Every strategy against its reference formula, on small updates worked out by hand."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from fl_kubeflow import strategies
from fl_kubeflow.client.numpy_trainers import random_weights
from fl_kubeflow.strategies import Strategy
from fl_kubeflow.strategies.options import parse_option_pairs
from fl_kubeflow.strategies.sampling import sample_clients, sample_size
from fl_kubeflow.wire import Weights
from tests.fl_processes import start_client, start_server, wait_all


def w(**tensors: Sequence[float]) -> Weights:
    return {name: np.array(values, dtype=np.float32) for name, values in tensors.items()}


def run_round(
    strategy: Strategy,
    server_round: int,
    global_weights: Weights,
    updates: Sequence[tuple[Weights, int]],
    client_ids: Sequence[str] | None = None,
) -> Weights:
    """One round exactly as the server drives it."""
    agg = strategy.start_round(server_round, global_weights)
    for i, (update, n) in enumerate(updates):
        agg.add(update, n, None if client_ids is None else client_ids[i])
    return strategy.finish_round(server_round, global_weights, agg.result())


def close(result: Weights, expected: dict[str, Sequence[float]], tol: float = 1e-6) -> None:
    assert sorted(result) == sorted(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(result[name], values, rtol=0, atol=tol, err_msg=name)


# ------------------------------------------------------------------ registry / options


def test_registry_has_the_issue_set():
    assert sorted(strategies.STRATEGIES) == sorted(
        [
            "fedavg",
            "fedavgm",
            "fedprox",
            "fedadam",
            "fedyogi",
            "fedadagrad",
            "fedmedian",
            "fedtrimmedavg",
            "krum",
            "multikrum",
        ]
    )
    robust = {n for n, cls in strategies.STRATEGIES.items() if not cls.streaming}
    assert robust == {"fedmedian", "fedtrimmedavg", "krum", "multikrum"}


@pytest.mark.parametrize(
    ("name", "options", "named"),
    [
        ("fedavgm", {"momentum": 1.0}, "momentum"),
        ("fedavgm", {"server_learning_rate": 0}, "server_learning_rate"),
        ("fedadam", {"eta": "fast"}, "eta"),
        ("fedyogi", {"beta_2": -0.1}, "beta_2"),
        ("fedadagrad", {"tau": 0}, "tau"),
        ("fedprox", {"proximal_mu": -1}, "proximal_mu"),
        ("fedtrimmedavg", {"beta": 0.6}, "beta"),
        ("fedtrimmedavg", {"trim_fraction": 0.7}, "trim_fraction"),
        ("krum", {"num_malicious": 1.5}, "num_malicious"),
        ("multikrum", {"num_selected": 0}, "num_selected"),
        ("fedavg", {"fraction_fit": 0}, "fraction_fit"),
        ("fedavg", {"fraction_evaluate": 1.5}, "fraction_evaluate"),
        ("fedmedian", {"seed": -1}, "seed"),
        ("fedavg", {"momentum": 0.9}, "momentum"),  # an option fedavg does not have
    ],
)
def test_bad_options_raise_naming_the_option(name, options, named):
    with pytest.raises(ValueError, match=named):
        strategies.create(name, **options)


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ValueError, match=r"valid options: server_learning_rate, momentum"):
        strategies.create("fedavgm", mommentum=0.9)


def test_options_from_cli_pairs():
    options = parse_option_pairs(["eta=0.05", "beta-1=0.8", "clipping=client", "seed=3"])
    assert options == {"eta": 0.05, "beta_1": 0.8, "clipping": "client", "seed": 3}
    strategy = strategies.create("fedadam", **{k: v for k, v in options.items() if k != "clipping"})
    assert strategy.options()["beta_1"] == 0.8
    with pytest.raises(ValueError, match="key=value"):
        parse_option_pairs(["eta"])
    with pytest.raises(ValueError, match="twice"):
        parse_option_pairs(["eta=1", "eta=2"])


# ------------------------------------------------------------------ FedAvg family


def test_fedavgm_two_rounds_by_hand():
    s = strategies.create("fedavgm", server_learning_rate=0.5, momentum=0.9)
    x0 = w(a=[1.0, 2.0])
    # Round 1: mean = [0.5, 2.5] -> g = x - mean = [0.5, -0.5]; v = g;
    # x1 = x0 - 0.5 * v = [0.75, 2.25].
    x1 = run_round(s, 1, x0, [(w(a=[0.0, 2.0]), 1), (w(a=[1.0, 3.0]), 1)])
    close(x1, {"a": [0.75, 2.25]})
    # Round 2: mean = [0.55, 2.25] -> g = [0.2, 0.0]; v = 0.9 * [0.5, -0.5] + g = [0.65, -0.45];
    # x2 = x1 - 0.5 * v = [0.425, 2.475].
    x2 = run_round(s, 2, x1, [(w(a=[0.55, 2.25]), 3)])
    close(x2, {"a": [0.425, 2.475]})
    assert x2["a"].dtype == np.float32


def test_fedavgm_without_momentum_is_fedavg():
    s = strategies.create("fedavgm", server_learning_rate=1.0, momentum=0.0)
    x0 = w(a=[0.0])
    # (1 * 1 + 4 * 3) / 4 = 3.25
    close(run_round(s, 1, x0, [(w(a=[1.0]), 1), (w(a=[4.0]), 3)]), {"a": [3.25]})


def test_fedadagrad_by_hand():
    s = strategies.create("fedadagrad", eta=1.0, beta_1=0.9, tau=0.3)
    # delta = 0.4; m = 0.1 * 0.4 = 0.04; v = tau^2 + delta^2 = 0.09 + 0.16 = 0.25;
    # x1 = 1 + 1.0 * 0.04 / (0.5 + 0.3) = 1.05
    x1 = run_round(s, 1, w(a=[1.0]), [(w(a=[1.4]), 1)])
    close(x1, {"a": [1.05]})
    # Round 2, delta = -0.3: m = 0.9 * 0.04 + 0.1 * -0.3 = 0.006; v = 0.25 + 0.09 = 0.34;
    # x2 = 1.05 + 0.006 / (sqrt(0.34) + 0.3)
    x2 = run_round(s, 2, x1, [(w(a=[0.75]), 1)])
    close(x2, {"a": [1.05 + 0.006 / (math.sqrt(0.34) + 0.3)]})


def test_fedadam_by_hand():
    s = strategies.create("fedadam", eta=0.6, beta_1=0.9, beta_2=0.5, tau=0.1)
    # delta = 0.7: m = 0.07; v = 0.5 * 0.01 + 0.5 * 0.49 = 0.25; x1 = 2 + 0.6 * 0.07 / 0.6 = 2.07
    x1 = run_round(s, 1, w(a=[2.0]), [(w(a=[2.7]), 1)])
    close(x1, {"a": [2.07]})
    # delta = 0.1 (mean of 2.07 and 2.27 minus 2.07): m = 0.063 + 0.01 = 0.073;
    # v = 0.5 * 0.25 + 0.5 * 0.01 = 0.13 (Adam decays v); x2 = 2.07 + 0.6 * 0.073 / (sqrt(.13) + .1)
    x2 = run_round(s, 2, x1, [(w(a=[2.07]), 1), (w(a=[2.27]), 1)])
    close(x2, {"a": [2.07 + 0.6 * 0.073 / (math.sqrt(0.13) + 0.1)]}, tol=2e-6)


def test_fedyogi_by_hand():
    s = strategies.create("fedyogi", eta=0.6, beta_1=0.9, beta_2=0.5, tau=0.1)
    # delta = 0.7: v_prev = 0.01 < 0.49 so v = 0.01 + 0.5 * 0.49 = 0.255 (Yogi grows v additively)
    x1 = run_round(s, 1, w(a=[2.0]), [(w(a=[2.7]), 1)])
    close(x1, {"a": [2.0 + 0.6 * 0.07 / (math.sqrt(0.255) + 0.1)]})
    # delta = 0.1: v_prev = 0.255 > 0.01 so v = 0.255 - 0.5 * 0.01 = 0.25; m = 0.063 + 0.01 = 0.073
    x2 = run_round(s, 2, x1, [(w(a=[float(x1["a"][0]) + 0.1]), 1)])
    close(x2, {"a": [float(x1["a"][0]) + 0.6 * 0.073 / (0.5 + 0.1)]}, tol=2e-6)


def test_server_optimizers_leave_integer_tensors_to_the_mean():
    s = strategies.create("fedadam", eta=0.5)
    x0 = {"w": np.zeros(2, np.float32), "steps": np.array([10], np.int64)}
    u1 = {"w": np.ones(2, np.float32), "steps": np.array([12], np.int64)}
    u2 = {"w": np.ones(2, np.float32), "steps": np.array([13], np.int64)}
    out = run_round(s, 1, x0, [(u1, 1), (u2, 1)])
    assert out["steps"].dtype == np.int64 and out["steps"][0] == 12  # 12.5 rounds to even
    assert out["w"].dtype == np.float32


def test_fedadam_state_survives_a_restart():
    x0 = w(a=[0.0, 1.0])
    rounds = [w(a=[0.5, 0.5]), w(a=[0.2, 1.5]), w(a=[-0.3, 0.1])]
    whole = strategies.create("fedadam", eta=0.1)
    x = x0
    for r, u in enumerate(rounds, 1):
        x = run_round(whole, r, x, [(u, 1)])
    first = strategies.create("fedadam", eta=0.1)
    y = run_round(first, 1, x0, [(rounds[0], 1)])
    resumed = strategies.create("fedadam", eta=0.1)
    resumed.load_state_dict(first.state_dict())
    for r, u in enumerate(rounds[1:], 2):
        y = run_round(resumed, r, y, [(u, 1)])
    np.testing.assert_array_equal(x["a"], y["a"])


def test_fedprox_sends_mu_and_averages_like_fedavg():
    s = strategies.create("fedprox", proximal_mu=0.1)
    assert s.configure_fit(3) == {"proximal_mu": 0.1}
    assert s.streaming
    close(run_round(s, 1, w(a=[0.0]), [(w(a=[1.0]), 1), (w(a=[4.0]), 3)]), {"a": [3.25]})


# ------------------------------------------------------------------ robust rules


def test_median_odd_count_ignores_example_counts():
    s = strategies.create("fedmedian")
    # coordinate 0: median(0, 10, 20) = 10 although the 0 claims 1000 examples;
    # coordinate 1: median(5, -1, 3) = 3
    out = run_round(s, 1, w(a=[0, 0]), [(w(a=[0, 5]), 1000), (w(a=[10, -1]), 1), (w(a=[20, 3]), 1)])
    close(out, {"a": [10.0, 3.0]})


def test_median_ties_and_even_count():
    s = strategies.create("fedmedian")
    updates = [w(a=[1, 1]), w(a=[2, 1]), w(a=[2, 3]), w(a=[3, 3])]
    # coordinate 0: sorted 1 2 2 3 -> middle pair (2, 2) -> 2;
    # coordinate 1: sorted 1 1 3 3 -> middle pair (1, 3) -> their mean 2
    out = run_round(s, 1, w(a=[0, 0]), [(u, 1) for u in updates])
    close(out, {"a": [2.0, 2.0]})


def test_trimmed_mean_by_hand():
    s = strategies.create("fedtrimmedavg", beta=0.2)
    updates = [w(a=[-100, 5]), w(a=[1, 4]), w(a=[2, 3]), w(a=[3, 2]), w(a=[100, 1])]
    # n = 5, int(0.2 * 5) = 1 dropped at each end of each coordinate:
    # coordinate 0: mean(1, 2, 3) = 2; coordinate 1: mean(2, 3, 4) = 3
    out = run_round(s, 1, w(a=[0, 0]), [(u, 1) for u in updates])
    close(out, {"a": [2.0, 3.0]})
    assert s.round_report(1) == {"rule": "trimmed_mean", "updates": 5, "trimmed": 1}
    # beta = 0.1 trims int(0.5) = 0 values: the plain mean (-100 + 1 + 2 + 3 + 100) / 5 = 1.2
    plain = strategies.create("fedtrimmedavg", trim_fraction=0.1)
    close(run_round(plain, 1, w(a=[0, 0]), [(u, 1) for u in updates]), {"a": [1.2, 3.0]})


def test_trim_that_removes_everything_fails_at_check():
    s = strategies.create("fedtrimmedavg", beta=0.5)
    s.check(num_clients=5, min_clients=5)  # int(2.5) = 2 per end: one value (the median) stays
    with pytest.raises(ValueError, match=r"beta=0.5 trims every update .* 4 clients"):
        s.check(num_clients=5, min_clients=4)
    with pytest.raises(ValueError, match="not both"):
        strategies.create("fedtrimmedavg", beta=0.1, trim_fraction=0.1)


# Five updates split over two tensors (x: first coordinate, y: second):
# a=(0,0) b=(1,0) c=(0,2) d=(1,1) e=(10,10). Squared distances:
# a-b 1, a-c 4, a-d 2, a-e 200, b-c 5, b-d 1, b-e 181, c-d 2, c-e 164, d-e 162.
# With f = 1 each score sums the n - f - 2 = 2 nearest:
# a: 1+2 = 3, b: 1+1 = 2, c: 2+4 = 6, d: 1+2 = 3, e: 162+164 = 326.
KRUM_POINTS = {"a": (0, 0), "b": (1, 0), "c": (0, 2), "d": (1, 1), "e": (10, 10)}


def krum_updates() -> list[tuple[Weights, int]]:
    return [(w(x=[p[0]], y=[p[1]]), 1) for p in KRUM_POINTS.values()]


def test_krum_picks_the_update_with_the_lowest_score():
    s = strategies.create("krum", num_malicious=1)
    out = run_round(s, 1, w(x=[0], y=[0]), krum_updates(), client_ids=list(KRUM_POINTS))
    close(out, {"x": [1.0], "y": [0.0]})  # b
    report = s.round_report(1)
    assert report["selected"] == ["b"]
    assert report["scores"] == {"a": 3.0, "b": 2.0, "c": 6.0, "d": 3.0, "e": 326.0}


def test_multikrum_averages_the_best():
    three = strategies.create("multikrum", num_malicious=1, num_selected=3)
    # best three: b (2), then a and d (3 each; a arrived first) -> mean of (1,0), (0,0), (1,1)
    out = run_round(three, 1, w(x=[0], y=[0]), krum_updates())
    close(out, {"x": [2 / 3], "y": [1 / 3]})
    assert three.round_report(1)["selected"] == [1, 0, 3]  # arrival positions without ids
    default = strategies.create("multikrum", num_malicious=1)
    # m = n - f = 4: b, a, d, c -> x (1+0+1+0)/4 = 0.5, y (0+0+1+2)/4 = 0.75
    close(run_round(default, 1, w(x=[0], y=[0]), krum_updates()), {"x": [0.5], "y": [0.75]})


def test_krum_needs_enough_clients_for_its_f():
    s = strategies.create("krum", num_malicious=1)
    s.check(num_clients=5, min_clients=5)
    with pytest.raises(ValueError, match=r"num_malicious=1 .* min_clients=4"):
        s.check(num_clients=5, min_clients=4)
    with pytest.raises(ValueError, match="num_selected=5"):
        strategies.create("multikrum", num_malicious=1, num_selected=5).check(5, 5)


@pytest.mark.parametrize("name", ["fedmedian", "fedtrimmedavg", "krum", "multikrum"])
def test_robust_rules_ignore_one_garbage_update(name):
    rng = np.random.default_rng(0)
    honest = [{"w": (1.0 + 0.01 * rng.standard_normal(50)).astype(np.float32)} for _ in range(4)]
    garbage = {"w": (1000.0 * rng.standard_normal(50)).astype(np.float32)}
    options = {"num_malicious": 1} if "krum" in name else {}
    x0 = {"w": np.zeros(50, np.float32)}
    updates = [(u, 100) for u in [*honest[:2], garbage, *honest[2:]]]
    robust = run_round(strategies.create(name, **options), 1, x0, updates)
    mean = run_round(strategies.create("fedavg"), 1, x0, updates)
    assert np.abs(robust["w"] - 1.0).max() < 0.05
    assert np.abs(mean["w"] - 1.0).max() > 100


# ------------------------------------------------------------------ sampling


def test_sample_size_follows_flower():
    assert sample_size(10, 0.3, 2) == 3  # int(3.0)
    assert sample_size(10, 0.25, 2) == 2  # int(2.5) = 2
    assert sample_size(10, 0.1, 2) == 2  # at least min_clients
    assert sample_size(3, 0.5, 5) == 3  # never more than there are
    assert sample_size(10, 1.0, 1) == 10


def test_sampling_is_deterministic_and_uniform():
    ids = [f"c{i}" for i in range(10)]
    first = sample_clients(ids, 0.3, 1, seed=7, server_round=4)
    assert first == sorted(first) and len(first) == 3 and set(first) <= set(ids)
    assert sample_clients(list(reversed(ids)), 0.3, 1, seed=7, server_round=4) == first
    assert strategies.create("fedavg", fraction_fit=0.3, seed=7).sample_fit(4, ids, 1) == first
    draws = [tuple(sample_clients(ids, 0.3, 1, seed=7, server_round=r)) for r in range(1, 2001)]
    assert len(set(draws[:20])) > 10  # rounds differ
    counts = {c: sum(c in d for d in draws) for c in ids}
    # Each client is in 3/10 of the 2000 draws: 600, binomial sd ~ 20.5; allow 5 sd.
    assert all(abs(n - 600) < 103 for n in counts.values()), counts
    evaluate = [tuple(sample_clients(ids, 0.3, 1, 7, r, stream="evaluate")) for r in range(1, 21)]
    assert evaluate != draws[:20]  # fit and evaluate are independent streams
    assert sample_clients(ids, 1.0, 1, 7, 1) == sorted(ids)


# ------------------------------------------------------------------ through the real server


def test_fedmedian_in_a_real_run(tmp_path):
    """Three delta clients, one of them far off: the median moves by the middle delta."""
    rounds, deltas = 2, [0.5, 1.0, 100.0]
    server = start_server(
        tmp_path, "--clients", "3", "--rounds", str(rounds), "--strategy", "fedmedian"
    )
    shapes = ["--shapes", "4x3,3"]
    clients = [
        start_client(tmp_path, server.url, i, *shapes, "--delta", str(d), "--num-examples", "1")
        for i, d in enumerate(deltas)
    ]
    assert wait_all(clients) == [0, 0, 0], [c.log() for c in clients]
    assert server.wait() == 0, server.log()
    initial = random_weights([(4, 3), (3,)], seed=0)
    final = server.final_weights()
    for name, w0 in initial.items():
        np.testing.assert_allclose(final[name], w0 + rounds * 1.0, atol=1e-5)
    assert server.history()["strategy"] == "fedmedian"


# ------------------------------------------------------------------ the Byzantine client


def test_adversarial_updates_by_hand():
    from fl_kubeflow.client.adversarial import AdversarialTrainer, corrupt
    from fl_kubeflow.client.numpy_trainers import DeltaTrainer

    g = w(a=[1.0, 2.0])
    trained = w(a=[1.5, 1.0])  # honest change (0.5, -1.0)
    rng = np.random.default_rng(0)
    close(corrupt(trained, g, "scale", 10.0, rng), {"a": [6.0, -8.0]})
    close(corrupt(trained, g, "sign-flip", 2.0, rng), {"a": [0.0, 4.0]})
    noisy = corrupt(trained, g, "noise", 100.0, rng)["a"] - g["a"]
    assert noisy.dtype == np.float32 and np.abs(noisy).max() > 1.0  # garbage, not training
    bad = AdversarialTrainer(DeltaTrainer(shapes=[(2,)], delta=1.0, num_examples=7), "scale", 3)
    result = bad.fit(g, 1, {})
    close(result.weights, {"a": [4.0, 5.0]})
    assert result.num_examples == 7  # the count stays honest
