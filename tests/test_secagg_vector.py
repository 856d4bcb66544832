"""A model as one vector: the layout both ends build, the change and its application."""

from __future__ import annotations

import numpy as np
import pytest

from fl_kubeflow.secagg.vector import Layout


def _model(offset: float = 0.0) -> dict[str, np.ndarray]:
    return {
        "dense/kernel": np.arange(6, dtype=np.float32).reshape(2, 3) + offset,
        "counter": np.array(4 + round(offset), np.int64),
        "bias": np.full(2, 0.5 + offset, np.float16),
    }


def test_the_layout_is_sorted_by_name_and_counts_the_weight():
    layout = Layout.of(_model())
    assert layout.names == ("bias", "counter", "dense/kernel")
    assert layout.shapes == ((2,), (), (2, 3))
    assert layout.dtypes == (np.float16, np.int64, np.float32)
    assert layout.size == 2 + 1 + 6 + 1


def test_change_is_the_flat_difference_in_layout_order():
    layout = Layout.of(_model())
    change = layout.change(_model(2.0), _model())
    assert change.dtype == np.float64
    assert change.tolist() == [2.0] * 9


def test_apply_inverts_change_and_keeps_shapes_and_dtypes():
    layout = Layout.of(_model())
    base = _model()
    model = layout.apply(base, np.array([0.25, -0.25, 0.6, *np.linspace(-1, 1, 6)]))
    assert {k: (v.shape, v.dtype) for k, v in model.items()} == {
        k: (v.shape, v.dtype) for k, v in base.items()
    }
    assert model["counter"] == 5  # 4 + 0.6, rounded: integer tensors stay integers
    assert model["bias"].tolist() == [0.75, 0.25]
    again = layout.apply(base, layout.change(_model(1.0), base))
    assert all(np.array_equal(again[k], _model(1.0)[k]) for k in base)


@pytest.mark.parametrize(
    "other",
    [
        {k: v for k, v in _model().items() if k != "bias"},
        {**_model(), "extra": np.zeros(1)},
        {**_model(), "bias": np.zeros(3, np.float16)},
    ],
)
def test_a_model_of_another_layout_is_refused(other):
    layout = Layout.of(_model())
    with pytest.raises(ValueError, match="tensor"):
        layout.change(other, _model())
    with pytest.raises(ValueError, match="tensor"):
        layout.apply(other, np.zeros(layout.size - 1))


def test_apply_refuses_a_change_of_another_length():
    layout = Layout.of(_model())
    with pytest.raises(ValueError, match="9 elements"):
        layout.apply(_model(), np.zeros(layout.size))


def test_apply_of_summed_levels_rounds_as_their_float64_mean_does():
    """The server applies the unmasked levels with their scale in chunks: the same model,
    to the bit, as applying ``levels.astype(float64) * scale``, across chunk edges."""
    rng = np.random.default_rng(4)
    base = {
        "big": rng.normal(size=(3, 70_001)).astype(np.float32),
        "counter": np.array(7, np.int64),
        "half": rng.normal(size=5).astype(np.float16),
    }
    layout = Layout.of(base)
    levels = rng.integers(-(2**31), 2**31, layout.size - 1).astype(np.int32)
    scale = 1.0 / 3e5
    chunked = layout.apply(base, levels, scale)
    whole = layout.apply(base, levels.astype(np.float64) * scale)
    for name in base:
        assert chunked[name].dtype == base[name].dtype
        assert np.array_equal(chunked[name], whole[name]), name


def _large_model(offset: float, seed: int = 3) -> dict[str, np.ndarray]:
    """Tensors longer than a chunk (2**16 elements), with values outside the range."""
    rng = np.random.default_rng(seed)
    return {
        "a/kernel": (rng.normal(size=(300, 301)) * 0.7 + offset).astype(np.float32),
        "b": (rng.normal(size=70_001) + offset).astype(np.float16),
        "c": np.array(7, np.int64),
    }


def test_change_chunks_cover_the_change_to_the_bit():
    layout = Layout.of(_large_model(0.0))
    trained, base = _large_model(0.3, seed=4), _large_model(0.0)
    whole = layout.change(trained, base)
    pieced = np.full(layout.size - 1, np.nan)
    for start, part in layout.change_chunks(trained, base):
        assert np.isnan(pieced[start : start + len(part)]).all()  # each element once
        pieced[start : start + len(part)] = part
    assert pieced.tobytes() == whole.tobytes()


def test_apply_writes_into_fitting_out_tensors_only():
    base = _model()
    layout = Layout.of(base)
    change = np.linspace(-1, 1, layout.size - 1)
    expected = layout.apply(base, change, 0.5)
    out = {
        "dense/kernel": np.full((2, 3), 9.0, np.float32),  # fits: written in place
        "bias": np.zeros(2, np.float32),  # another dtype: a new tensor
        "counter": np.zeros((), np.int64),
    }
    out["counter"].setflags(write=False)  # read-only: a new tensor
    model = layout.apply(base, change, 0.5, out=out)
    assert model["dense/kernel"] is out["dense/kernel"]
    assert model["bias"] is not out["bias"] and model["counter"] is not out["counter"]
    for name in base:
        assert model[name].dtype == expected[name].dtype
        assert model[name].tobytes() == expected[name].tobytes()
