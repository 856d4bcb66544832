"""Fixed-point encoding of weighted changes, and the decoded mean's error bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_kubeflow.secagg.params import SecAggParams
from fl_kubeflow.secagg.quantise import Quantiser, WeightError


def _sum(quantiser: Quantiser, changes: list[np.ndarray], weights: list[int]) -> np.ndarray:
    """The server's running sum of the clients' encodings (wrapping, as masked)."""
    total = np.zeros(len(changes[0]) + 1, quantiser.dtype)
    for change, weight in zip(changes, weights, strict=True):
        encoded, _ = quantiser.encode(change, weight)
        total += encoded
    return total


@settings(max_examples=60, deadline=None)
@given(
    bits=st.sampled_from([32, 64]),
    max_weight=st.sampled_from([1, 3, 1000, 100_000, 2**20]),
    limit=st.sampled_from([1e-3, 0.5, 1.0, 7.0]),
    clients=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_decoded_mean_is_within_the_error_bound(bits, max_weight, limit, clients, seed):
    params = SecAggParams(bits=bits, range=limit, max_weight=max_weight)
    quantiser = Quantiser(params)
    rng = np.random.default_rng(seed)
    # Weights that add up to at most max_weight, some clients at the edge.
    weights = [int(w) for w in rng.integers(1, max(max_weight // clients, 1) + 1, clients)]
    if sum(weights) > max_weight:
        weights = [1] * min(clients, max_weight)
    # Changes of every size: most inside the range, some beyond it (clipped).
    changes = [rng.normal(0.0, limit * 0.6, 200) for _ in weights]
    for change in changes:
        change[:3] = [limit, -limit, quantiser.step * 0.5]
    mean, total = quantiser.decode(_sum(quantiser, changes, weights))
    clipped = [np.clip(c, -limit, limit) for c in changes]
    exact = np.average(np.stack(clipped), axis=0, weights=np.array(weights, np.float64))
    assert total == sum(weights)
    assert np.abs(mean - exact).max() <= quantiser.error_bound


def test_the_defaults_give_the_docs_step_and_bound():
    quantiser = Quantiser(SecAggParams())
    assert quantiser.dtype == np.uint32
    assert quantiser.levels == (2**31 - 1) // 100_000
    assert quantiser.step == pytest.approx(4.66e-5, rel=1e-3)
    assert quantiser.error_bound == pytest.approx(2.33e-5, rel=1e-3)
    assert Quantiser(SecAggParams(bits=64)).dtype == np.uint64


def test_encode_rounds_half_to_even_clips_and_counts_the_clipped():
    quantiser = Quantiser(SecAggParams(range=1.0, max_weight=3))
    s, levels = quantiser.step, quantiser.levels
    change = np.array([0.5 * s, 1.5 * s, -1.5 * s, 2.0, -1.0, -3.0, 1.0 + s / 4])
    encoded, clipped = quantiser.encode(change, 3)
    signed = encoded.view(np.int32)
    assert list(signed[:-1]) == [0, 6, -6, 3 * levels, -3 * levels, -3 * levels, 3 * levels]
    assert encoded[-1] == 3 and encoded.dtype == np.uint32
    assert clipped == 3


def test_an_encoding_spans_chunks():
    quantiser = Quantiser(SecAggParams(bits=64))
    change = np.linspace(-1.0, 1.0, 3 * 65536 + 11)
    mean, weight = quantiser.decode(quantiser.encode(change, 2)[0])
    assert weight == 2 and np.abs(mean - change).max() <= quantiser.error_bound


@pytest.mark.parametrize("weight", [0, -1, 1001, True, 2.0])
def test_a_client_weight_outside_one_to_max_weight_is_refused(weight):
    with pytest.raises(WeightError):
        Quantiser(SecAggParams(max_weight=1000)).encode(np.zeros(3), weight)


def test_a_round_total_over_max_weight_is_refused():
    quantiser = Quantiser(SecAggParams(max_weight=1000))
    changes = [np.full(4, 0.1), np.full(4, 0.2)]
    with pytest.raises(WeightError, match="total weight 1200"):
        quantiser.decode(_sum(quantiser, changes, [600, 600]))
    with pytest.raises(WeightError, match="total weight 0"):
        quantiser.decode(np.zeros(5, np.uint32))


def test_encode_refuses_non_finite_and_decode_other_dtypes():
    quantiser = Quantiser(SecAggParams())
    with pytest.raises(ValueError, match="NaN"):
        quantiser.encode(np.array([0.0, np.nan]), 1)
    with pytest.raises(ValueError, match="one-dimensional"):
        quantiser.encode(np.zeros((2, 2)), 1)
    with pytest.raises(ValueError, match="uint32"):
        quantiser.decode(np.ones(3, np.uint64))


@pytest.mark.parametrize("bits", [32, 64])
def test_encoding_pieces_into_used_memory_gives_the_same_vector(bits):
    """``encode_chunks`` of ``Layout.change_chunks`` into memory holding old values (a
    recycled vector) is ``encode`` of the whole change, to the bit, clipping included."""
    from fl_kubeflow.secagg.vector import Layout

    rng = np.random.default_rng(5)
    base = {"w": rng.normal(size=(400, 401)).astype(np.float32), "v": np.zeros(3, np.float32)}
    trained = {"w": base["w"] + rng.normal(size=(400, 401)).astype(np.float32) * 0.6}
    trained["v"] = np.array([0.5, -3.0, 2.0], np.float32)
    quantiser = Quantiser(SecAggParams(bits=bits))
    layout = Layout.of(base)
    expected, clipped = quantiser.encode(layout.change(trained, base), 17)
    assert clipped > 0
    used = np.full(layout.size, 12345, quantiser.dtype)
    vector, clipped_again = quantiser.encode_chunks(
        layout.change_chunks(trained, base), layout.size - 1, 17, out=used
    )
    assert vector is used and clipped_again == clipped
    assert vector.tobytes() == expected.tobytes()
    with pytest.raises(ValueError, match="out must be"):
        quantiser.encode_chunks(iter(()), 3, 1, out=np.zeros(3, quantiser.dtype))
