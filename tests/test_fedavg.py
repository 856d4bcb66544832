"""FedAvg's arithmetic, checked against numbers worked out by hand."""

import threading

import numpy as np
import pytest

from fl_kubeflow import strategies
from fl_kubeflow.recycling import Recycler
from fl_kubeflow.strategies.fedavg import WeightedSum, weighted_average


def test_weighted_average_by_hand():
    a = {"w": np.array([1.0, 2.0], dtype=np.float32)}
    b = {"w": np.array([3.0, 6.0], dtype=np.float32)}
    # (1*1 + 3*3) / 4 = 2.5 ; (2*1 + 6*3) / 4 = 5.0
    result = weighted_average([(a, 1), (b, 3)])
    np.testing.assert_array_equal(result["w"], np.array([2.5, 5.0], dtype=np.float32))
    assert result["w"].dtype == np.float32


def test_accumulates_in_float64():
    # In float32, 1e8 + 1 == 1e8: only a float64 accumulator keeps the small updates.
    big = {"w": np.array([1e8], dtype=np.float32)}
    ones = {"w": np.array([1.0], dtype=np.float32)}
    updates = [(big, 1)] + [(ones, 1)] * 999
    exact = (1e8 + 999) / 1000
    assert weighted_average(updates)["w"][0] == pytest.approx(exact, rel=1e-6)


def test_integer_tensors_are_rounded_not_truncated():
    a = {"step": np.array([1], dtype=np.int64)}
    b = {"step": np.array([2], dtype=np.int64)}
    # (1*1 + 2*2) / 3 = 1.67 -> 2
    assert weighted_average([(a, 1), (b, 2)])["step"][0] == 2


def test_streaming_keeps_one_model_of_state():
    acc = WeightedSum()
    rng = np.random.default_rng(0)
    for n in range(1, 50):
        acc.add({"w": rng.standard_normal(100).astype(np.float32)}, n)
    assert set(acc._sums) == {"w"}
    assert acc.count == 49
    assert acc.total_examples == sum(range(1, 50))


def test_create_unknown_strategy_lists_known():
    with pytest.raises(ValueError, match="fedavg"):
        strategies.create("nope")


@pytest.mark.parametrize(
    "size", [1, WeightedSum.CHUNK - 1, WeightedSum.CHUNK, 2 * WeightedSum.CHUNK + 5]
)
def test_sliced_accumulation_matches_a_float64_reference(size):
    # WeightedSum folds updates in slices through a small scratch: every slice boundary
    # must add up exactly like the whole-array float64 sum.
    rng = np.random.default_rng(size)
    updates = [
        (
            {
                "w": rng.standard_normal((size, 3)).astype(np.float32),
                "n": rng.integers(-5, 5, size=size).astype(np.int32),
            },
            int(rng.integers(1, 100)),
        )
        for _ in range(4)
    ]
    total = sum(n for _, n in updates)
    result = weighted_average(updates)
    for name in ("w", "n"):
        expected = sum(u[name].astype(np.float64) * n for u, n in updates) / total
        if name == "n":
            expected = np.rint(expected)
        np.testing.assert_array_equal(result[name], expected.astype(updates[0][0][name].dtype))


def test_result_releases_the_float64_sums():
    acc = WeightedSum()
    acc.add({"w": np.ones(10, dtype=np.float32)}, 2)
    out = acc.result()
    assert acc._sums == {}
    np.testing.assert_array_equal(out["w"], np.ones(10, dtype=np.float32))


def _updates(rng: np.random.Generator, count: int, size: int) -> list[tuple[dict, int]]:
    return [
        (
            {
                "w": rng.standard_normal(size).astype(np.float32),
                "b": rng.standard_normal((3, 2)).astype(np.float32),
                "empty": np.zeros((0, 4), np.float32),
            },
            int(rng.integers(1, 1000)),
        )
        for _ in range(count)
    ]


def _reference(updates: list[tuple[dict, int]]) -> dict[str, np.ndarray]:
    total = sum(n for _, n in updates)
    return {
        name: (sum(u[name].astype(np.float64) * n for u, n in updates) / total).astype(np.float32)
        for name in updates[0][0]
    }


def test_concurrent_folds_match_the_sequential_sum():
    # Stripes of the sum are taken in turn by 8 threads at once; every stripe must get
    # every update exactly once, the first written rather than added.
    size = 3 * WeightedSum.STRIPE + 17
    updates = _updates(np.random.default_rng(3), 8, size)
    acc = WeightedSum(Recycler())
    start = threading.Barrier(len(updates))

    def fold(update: tuple[dict, int]) -> None:
        start.wait()
        acc.add(*update)

    threads = [threading.Thread(target=fold, args=(u,)) for u in updates]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert acc.count == 8 and acc.total_examples == sum(n for _, n in updates)
    result, expected = acc.result(), _reference(updates)
    for name in expected:
        assert result[name].shape == expected[name].shape
        # Addition order differs between stripes: equal up to float64 rounding.
        np.testing.assert_allclose(result[name], expected[name], rtol=1e-6, atol=1e-7)


def test_recycled_sums_are_overwritten_not_added_to():
    arrays = Recycler()
    rng = np.random.default_rng(4)
    first_round, second_round = _updates(rng, 3, 1000), _updates(rng, 2, 1000)
    acc = WeightedSum(arrays)
    for update in first_round:
        acc.add(*update)
    first = acc.result()
    acc = WeightedSum(arrays)
    for update in second_round:
        acc.add(*update)
    assert arrays.reused == 3  # round one's three sums, no new memory
    # Nothing of round one leaks into round two.
    np.testing.assert_allclose(acc.result()["w"], _reference(second_round)["w"], rtol=1e-6)
    np.testing.assert_allclose(first["w"], _reference(first_round)["w"], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int64])
def test_the_mean_is_divided_in_float64_then_cast_to_the_clients_dtype(dtype):
    rng = np.random.default_rng(5)
    updates = [((rng.standard_normal(257) * 50).astype(dtype), n) for n in (3, 7, 11)]
    exact = sum(u.astype(np.float64) * n for u, n in updates) / 21
    expected = (np.rint(exact) if np.issubdtype(dtype, np.integer) else exact).astype(dtype)
    result = weighted_average([({"w": u}, n) for u, n in updates])["w"]
    assert result.dtype == dtype
    np.testing.assert_array_equal(result, expected)
