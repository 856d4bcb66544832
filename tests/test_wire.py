"""The safetensors wire format: exact round trips and clear errors for garbage."""

import numpy as np
import pytest

from fl_kubeflow import wire


def test_round_trip_preserves_names_shapes_dtypes_values():
    weights = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.array([1.5], dtype=np.float64),
        "c": np.array([[1, 2]], dtype=np.int64),
    }
    back = wire.decode(wire.encode(weights))
    assert wire.describe(back) == wire.describe(weights)
    for name in weights:
        np.testing.assert_array_equal(back[name], weights[name])


def test_encoding_overhead_is_small():
    weights = {"w": np.zeros((1000, 1000), dtype=np.float32)}
    assert len(wire.encode(weights)) < 4_000_000 * 1.001


@pytest.mark.parametrize(
    "data",
    [b"", b"1234", b"\xff" * 64, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}"],
)
def test_garbage_raises_wire_format_error(data):
    with pytest.raises(wire.WireFormatError):
        wire.decode(data)


def test_truncated_body_raises():
    data = wire.encode({"w": np.ones(100, dtype=np.float32)})
    with pytest.raises(wire.WireFormatError):
        wire.decode(data[:-10])
