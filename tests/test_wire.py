"""The safetensors wire format: exact round trips and clear errors for garbage."""

import json
import struct

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


# --- the codec is our own (issue #6): same bytes as safetensors, fewer copies ------------

MIXED = {
    "b": np.arange(6, dtype=np.float32).reshape(2, 3),
    "a": np.array([1, -2], dtype=np.int64),
    "z": np.array([0.5, 1.5], dtype=np.float64),
    "h": np.array([1.0, 2.0, 3.0], dtype=np.float16),
    "u": np.array([7], dtype=np.uint8),
    "flag": np.array([True, False]),
    "scalar": np.array(3.5, dtype=np.float32),
    "empty": np.zeros((2, 0), dtype=np.float32),
    'q"uote\\é': np.ones(3, dtype=np.int32),
}


def test_encode_writes_the_same_bytes_as_safetensors():
    from safetensors.numpy import save

    assert wire.encode(MIXED) == save(MIXED)
    assert wire.encode(MIXED, metadata={"k": "v"}) == save(MIXED, metadata={"k": "v"})
    assert b"".join(wire.encode_parts(MIXED)) == wire.encode(MIXED)


def test_decode_reads_what_safetensors_reads():
    from safetensors.numpy import load

    data = wire.encode(MIXED)
    ours, theirs = wire.decode(data), load(data)
    assert set(ours) == set(theirs) == set(MIXED)
    for name, value in theirs.items():
        assert ours[name].dtype == value.dtype and ours[name].shape == value.shape
        np.testing.assert_array_equal(ours[name], value)
    assert ours["scalar"].shape == ()  # a 0-d tensor stays 0-d


def test_decode_of_a_writable_buffer_makes_views_and_of_bytes_a_writable_copy():
    data = wire.encode({"w": np.arange(1000, dtype=np.float32)})
    buffer = memoryview(np.frombuffer(data, dtype=np.uint8).copy())
    viewed = wire.decode(buffer)["w"]
    assert np.shares_memory(viewed, np.asarray(buffer))
    copied = wire.decode(data)["w"]
    assert copied.flags.writeable
    copied[0] = 5.0  # callers may change what they were given


def _message(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize(
    ("header", "data"),
    [
        ({"w": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}, b"x"),
        ({"w": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}, b"xx"),
        ({"w": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}, b"x"),
        ({"w": {"dtype": "U8", "shape": [1.0], "data_offsets": [0, 1]}}, b"x"),
        ({"w": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}}, b"x"),
        ({"w": {"dtype": "U8", "shape": [2], "data_offsets": [0, 1]}}, b"x"),
        (
            {
                "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                "b": {"dtype": "U8", "shape": [1], "data_offsets": [2, 3]},
            },
            b"xyz",
        ),
        (
            {
                "a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                "b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]},
            },
            b"xyz",
        ),
        ({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"xy"),
        ({"__metadata__": {"k": 1}}, b""),
        ({"w": [1]}, b""),
    ],
    ids=[
        "unknown-dtype",
        "bf16-without-wire-dtype",
        "bool-dim",
        "float-dim",
        "negative-dim",
        "size-mismatch",
        "gap",
        "overlap",
        "trailing-bytes",
        "metadata-not-str",
        "tensor-not-object",
    ],
)
def test_malformed_headers_raise_wire_format_error(header, data):
    with pytest.raises(wire.WireFormatError):
        wire.decode(_message(header, data))


def test_header_length_beyond_the_limit_raises():
    with pytest.raises(wire.WireFormatError, match="header"):
        wire.decode(struct.pack("<Q", wire.MAX_HEADER_BYTES + 1) + b"{}")


# --- half-precision transfer -------------------------------------------------------------


@pytest.mark.parametrize("wire_dtype", ["float16", "bfloat16"])
def test_half_precision_halves_float32_bytes_and_decodes_to_float32(wire_dtype):
    rng = np.random.default_rng(0)
    weights = {
        "w": rng.standard_normal((100, 100)).astype(np.float32),
        "steps": np.array([3, 4], dtype=np.int64),
    }
    full, half = wire.encode(weights), wire.encode(weights, wire_dtype=wire_dtype)
    assert len(half) < 0.51 * len(full)
    back = wire.decode(half, wire_dtype=wire_dtype)
    assert back["w"].dtype == np.float32 and back["w"].shape == (100, 100)
    np.testing.assert_array_equal(back["steps"], weights["steps"])
    bits = 11 if wire_dtype == "float16" else 8  # mantissa bits kept, with the implicit one
    np.testing.assert_allclose(back["w"], weights["w"], rtol=2.0**-bits, atol=1e-7)


def test_float16_on_a_float32_wire_stays_float16():
    data = wire.encode({"h": np.ones(3, dtype=np.float16)})
    assert wire.decode(data)["h"].dtype == np.float16


def test_bfloat16_rounds_to_nearest_even_and_keeps_specials():
    ones = np.uint32(0x3F800000)
    values = np.array(
        [
            ones,  # 1.0: exact
            ones + 0x7FFF,  # below half an ulp: down
            ones + 0x8000,  # exactly half, even below: stays 1.0
            ones + 0x18000,  # exactly half, odd below: up to even
            ones + 0x8001,  # above half: up
            0x7F7FFFFF,  # largest float32: rounds to infinity
            0x7F800000,  # +inf
            0xFF800000,  # -inf
            0x7FC00001,  # NaN with a payload
            0xFFFFFFFF,  # negative NaN whose rounding would carry
        ],
        dtype=np.uint32,
    )
    bits = wire.to_bfloat16(values.view(np.float32))
    expected = [0x3F80, 0x3F80, 0x3F80, 0x3F82, 0x3F81, 0x7F80, 0x7F80, 0xFF80]
    assert bits[:8].tolist() == expected
    back = wire.from_bfloat16(bits)
    assert np.isnan(back[8:]).all()
    assert np.signbit(back[9])


def test_unknown_wire_dtype_is_refused():
    with pytest.raises(ValueError, match="float16"):
        wire.encode({"w": np.ones(1, np.float32)}, wire_dtype="int8")


def test_encode_buffer_is_the_same_message_read_only():
    buffer = wire.encode_buffer(MIXED, wire_dtype="float16")
    assert buffer.readonly
    assert bytes(buffer) == wire.encode(MIXED, wire_dtype="float16")


def test_a_filled_frame_is_the_same_message_as_encode():
    weights = {
        "b": np.arange(3, dtype=np.int64),
        "a": np.random.default_rng(0).random((4, 5)).astype(np.float32),
        "scalar": np.full((), 2.5, np.float32),
        "half": np.ones(3, np.float16),
        "empty": np.zeros((0, 2), np.float32),
        "big_endian": np.arange(6, dtype=">f4").reshape(2, 3),
    }
    frame = wire.Frame(weights)
    for name, value in weights.items():
        np.copyto(frame.tensors[name], value)
    message = frame.seal()
    assert bytes(message) == wire.encode(weights)
    decoded = wire.decode(bytes(message))
    for name, value in weights.items():
        np.testing.assert_array_equal(decoded[name], value)
        # The model's tensors live inside the message, read-only from now on.
        assert np.shares_memory(frame.tensors[name], frame.buffer) or value.size == 0
        assert not frame.tensors[name].flags.writeable
