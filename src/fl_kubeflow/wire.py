"""Weights on the wire: safetensors bytes, never JSON numbers, never pickle.

A model is an ordered mapping of tensor name to numpy array. safetensors stores
names in its JSON header, so each side rebuilds the mapping by name; the order a
framework needs is the trainer's concern (it sorts by name).

The format is read and written here rather than by ``safetensors.numpy``: its
``save`` copies every tensor twice and its ``load`` copies every tensor once,
which for a 40 MB model sent to and received from many clients per round is most
of the server's work. ``encode`` makes one copy (into the message), ``decode``
none (arrays are views of a writable message). The bytes are the same as
``safetensors.numpy.save`` writes, and ``decode`` checks everything its parser
checks.

Half-precision transfer: ``encode(..., wire_dtype="float16" | "bfloat16")`` sends
float32 tensors in that dtype (half the bytes); ``decode`` with the same
``wire_dtype`` turns them back into float32. numpy has no bfloat16, so bfloat16 is
made by bit manipulation of float32: the upper 16 bits, rounded to nearest even.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Weights = dict[str, np.ndarray]
# A message as read from a socket: bytes, or a writable buffer that arrays can view.
Buffer = bytes | bytearray | memoryview

CONTENT_TYPE = "application/vnd.safetensors"

WIRE_DTYPES = ("float32", "float16", "bfloat16")

# safetensors' own limit: a larger header is refused before it is parsed.
MAX_HEADER_BYTES = 100_000_000

# safetensors dtype codes that numpy holds, and the numpy dtype of each.
_NUMPY_OF_CODE: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "C64": np.dtype("<c8"),
    "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
    "I32": np.dtype("<i4"),
    "U32": np.dtype("<u4"),
    "I16": np.dtype("<i2"),
    "U16": np.dtype("<u2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_CODE_OF_KIND = {(dt.kind, dt.itemsize): code for code, dt in _NUMPY_OF_CODE.items()}
# safetensors lays tensors out by dtype, in its enum's order from the last (widest
# alignment first), then by name: the same order makes the same bytes.
_ORDER = ["BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64"]
_ORDER += ["F64", "I64", "U64"]
_RANK = {code: i for i, code in enumerate(_ORDER)}
_HALF_CODE = {"float16": "F16", "bfloat16": "BF16"}
# Elements converted per step: keeps bfloat16's integer temporaries in cache.
_CHUNK = 1 << 16


class WireFormatError(ValueError):
    """The bytes are not a well-formed safetensors file."""


def check_wire_dtype(wire_dtype: str) -> str:
    """``wire_dtype`` if it is one of WIRE_DTYPES, else ValueError naming the choices."""
    if wire_dtype not in WIRE_DTYPES:
        raise ValueError(f"wire dtype must be one of {', '.join(WIRE_DTYPES)}, got {wire_dtype!r}")
    return wire_dtype


def encode(
    weights: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    wire_dtype: str = "float32",
) -> bytes:
    """Serialise weights to safetensors bytes; float32 tensors travel as ``wire_dtype``."""
    # bytes.join sizes the result once and copies each part into it: one copy in all.
    return b"".join(encode_parts(weights, metadata, wire_dtype))


def encode_buffer(
    weights: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    wire_dtype: str = "float32",
    allocate: Callable[[tuple[int, ...], Any], np.ndarray] = np.empty,
) -> memoryview:
    """Like ``encode``, into a read-only numpy buffer: for a message kept and sent many times.

    numpy asks the kernel for huge pages, so the one copy does not also pay ~10,000
    page faults per 40 MB as a fresh bytes object does. ``allocate(shape, dtype)``
    makes the buffer (e.g. ``Recycler.empty``, which reuses a dropped message's).
    """
    frame = Frame(weights, wire_dtype, metadata, allocate)
    frame.fill(weights)
    return frame.seal()


def encode_parts(
    weights: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    wire_dtype: str = "float32",
) -> list[memoryview]:
    """The safetensors message as a list of buffers: its header, then each tensor's memory.

    Nothing is copied (unless a tensor must change dtype, byte order or layout): a
    sender can hand the parts to ``socket.sendall`` one by one.
    """
    plan = _plan(weights, wire_dtype)
    arrays = [_on_wire(np.asarray(weights[name]), code, dtype) for name, code, _, dtype in plan]
    sizes = [
        (name, code, shape, a.nbytes)
        for (name, code, shape, _), a in zip(plan, arrays, strict=True)
    ]
    head = _header(sizes, metadata)
    return [memoryview(head), *(memoryview(a.reshape(-1).view(np.uint8)) for a in arrays)]


def _plan(
    weights: Mapping[str, np.ndarray], wire_dtype: str
) -> list[tuple[str, str, tuple[int, ...], np.dtype]]:
    """Each tensor's name, safetensors code, shape and dtype in the message, in its order.

    float32 travels as ``wire_dtype`` (bfloat16 as its uint16 bits), big-endian as
    little-endian; larger dtypes come first, so every tensor stays aligned.
    """
    check_wire_dtype(wire_dtype)
    plan = []
    for name, value in weights.items():
        dtype = np.asarray(value).dtype
        if wire_dtype != "float32" and dtype == np.float32:
            code = _HALF_CODE[wire_dtype]
            dtype = np.dtype("<u2") if code == "BF16" else np.dtype("<f2")
        else:
            code = _code_of(name, dtype)
            dtype = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
        plan.append((name, code, tuple(np.shape(value)), dtype))
    plan.sort(key=lambda e: (-_RANK[e[1]], e[0]))
    return plan


def _on_wire(array: np.ndarray, code: str, dtype: np.dtype) -> np.ndarray:
    """``array`` as it travels: as bfloat16 bits, or ``dtype``, and C-contiguous."""
    if code == "BF16":
        return to_bfloat16(array)
    if array.dtype != dtype:
        array = array.astype(dtype)
    # Not np.ascontiguousarray: it turns a 0-d tensor into shape (1,).
    return array if array.flags.c_contiguous else array.copy()


def _header(
    entries: list[tuple[str, str, tuple[int, ...], int]], metadata: Mapping[str, str] | None
) -> bytes:
    """The length prefix and JSON header for (name, code, shape, nbytes) in message order."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    offset = 0
    for name, code, shape, nbytes in entries:
        end = offset + nbytes
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    # Padded with spaces to 8 bytes, as safetensors does, so tensors stay aligned.
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


class Frame:
    """A message laid out before its tensors are known: header written, tensors to fill.

    ``tensors`` are writable arrays inside the message, shaped like the template's
    and typed as they travel; ``fill`` them (or write into them), then ``seal`` for
    the message: the same bytes as ``encode``. With float32 on the wire a model's
    tensors can be the message's, so the model needs no memory of its own.
    """

    def __init__(
        self,
        template: Mapping[str, np.ndarray],
        wire_dtype: str = "float32",
        metadata: Mapping[str, str] | None = None,
        allocate: Callable[[tuple[int, ...], Any], np.ndarray] = np.empty,
    ) -> None:
        plan = _plan(template, wire_dtype)
        sizes = [math.prod(shape) * dtype.itemsize for _, _, shape, dtype in plan]
        head = _header(
            [(n, c, shape, size) for (n, c, shape, _), size in zip(plan, sizes, strict=True)],
            metadata,
        )
        self.buffer = allocate((len(head) + sum(sizes),), np.uint8)
        self.buffer[: len(head)] = np.frombuffer(head, np.uint8)
        self.tensors: Weights = {}
        self._codes = {name: code for name, code, _, _ in plan}
        offset = len(head)
        for (name, _, shape, dtype), size in zip(plan, sizes, strict=True):
            self.tensors[name] = self.buffer[offset : offset + size].view(dtype).reshape(shape)
            offset += size

    def fill(self, weights: Mapping[str, np.ndarray]) -> None:
        """Copy ``weights`` into the tensors as they travel (those already there are kept)."""
        for name, tensor in self.tensors.items():
            value = weights[name]
            if value is tensor:
                continue
            if self._codes[name] == "BF16":
                tensor[...] = to_bfloat16(value)
            else:
                np.copyto(tensor, value)

    def seal(self) -> memoryview:
        """The message, read-only; the tensors become read-only too."""
        for tensor in self.tensors.values():
            tensor.setflags(write=False)
        self.buffer.setflags(write=False)
        return memoryview(self.buffer)


def decode(data: Buffer, wire_dtype: str = "float32") -> Weights:
    """Parse safetensors bytes into arrays; any malformation raises WireFormatError.

    The arrays are views of ``data`` when it is writable (a bytearray): no copy.
    Read-only ``data`` (bytes) is copied once, so the arrays are always writable,
    as ``safetensors.numpy.load``'s are. Tensors stored as ``wire_dtype`` (float16
    or bfloat16) come back as float32.
    """
    check_wire_dtype(wire_dtype)
    view = memoryview(data).cast("B")
    size = len(view)
    if size < 8:
        raise WireFormatError(f"body of {size} bytes is too short to be safetensors")
    header_len = int.from_bytes(view[:8], "little")
    if header_len > MAX_HEADER_BYTES:
        raise WireFormatError(f"body is not valid safetensors: header of {header_len} bytes")
    if 8 + header_len > size:
        raise WireFormatError(
            f"body is not valid safetensors: header of {header_len} bytes in a body of {size}"
        )
    entries = _parse_header(bytes(view[8 : 8 + header_len]))
    data_len = size - 8 - header_len
    end = _check_layout(entries)
    if end != data_len:
        raise WireFormatError(
            f"body is not valid safetensors: tensors cover {end} of {data_len} data bytes"
        )
    # A numpy copy, not bytearray: numpy asks for huge pages (~10,000 fewer page faults
    # for 40 MB).
    buffer = memoryview(np.frombuffer(view, np.uint8).copy()) if view.readonly else view
    base = 8 + header_len
    half = _HALF_CODE.get(wire_dtype)
    weights: Weights = {}
    for name, code, shape, start, _stop in sorted(entries, key=lambda e: (e[3], e[4])):
        count = math.prod(shape)
        if code == "BF16":
            if half != "BF16":
                raise WireFormatError(
                    f"tensor {name!r} is bfloat16, which is accepted only with wire dtype bfloat16"
                )
            raw = np.frombuffer(buffer, np.dtype("<u2"), count, base + start)
            weights[name] = from_bfloat16(raw).reshape(shape)
            continue
        dtype = _NUMPY_OF_CODE[code]
        array = np.frombuffer(buffer, dtype, count, base + start).reshape(shape)
        if code == half:
            array = array.astype(np.float32)
        weights[name] = array
    return weights


def to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounded to nearest even; NaN stays NaN."""
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    out = np.empty(flat.size, dtype=np.uint16)
    bits = flat.view(np.uint32)
    for lo in range(0, flat.size, _CHUNK):
        chunk = bits[lo : lo + _CHUNK]
        # Round to nearest even: add 0x7FFF plus the lowest kept bit, then drop 16 bits.
        rounded = (chunk + (0x7FFF + ((chunk >> 16) & 1)).astype(np.uint32)) >> 16
        # The carry of a NaN's payload could turn it into Inf or zero: keep it a quiet NaN.
        nan = np.isnan(flat[lo : lo + _CHUNK])
        rounded[nan] = (chunk[nan] >> 16) | 0x0040
        out[lo : lo + _CHUNK] = rounded
    return out.reshape(np.shape(values))


def from_bfloat16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32, exactly: they are a float32's upper half."""
    out = np.empty(bits.shape, dtype=np.uint32)
    np.left_shift(bits, 16, out=out, dtype=np.uint32)
    return out.view(np.float32)


def describe(weights: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype name): the model's signature that every update must match."""
    return {name: (tuple(a.shape), a.dtype.name) for name, a in weights.items()}


def nbytes(weights: Mapping[str, np.ndarray]) -> int:
    """Total tensor bytes."""
    return sum(int(a.nbytes) for a in weights.values())


def _code_of(name: str, dtype: np.dtype) -> str:
    code = _CODE_OF_KIND.get((dtype.kind, dtype.itemsize))
    if code is None:
        raise WireFormatError(f"tensor {name!r} has dtype {dtype}, which safetensors cannot hold")
    return code


_Entry = tuple[str, str, list[int], int, int]


def _parse_header(raw: bytes) -> list[_Entry]:
    """The header's tensors as (name, dtype code, shape, start, stop); checks every type."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireFormatError(f"body is not valid safetensors: header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise WireFormatError("body is not valid safetensors: header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise WireFormatError("body is not valid safetensors: __metadata__ must map str to str")
    entries: list[_Entry] = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise WireFormatError(
                f"body is not valid safetensors: tensor {name!r} is not an object"
            )
        code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if code not in _NUMPY_OF_CODE and code != "BF16":
            raise WireFormatError(f"body is not valid safetensors: tensor {name!r} dtype {code!r}")
        if not (isinstance(shape, list) and all(_is_size(d) for d in shape)):
            raise WireFormatError(f"body is not valid safetensors: tensor {name!r} shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_size, offsets))):
            raise WireFormatError(
                f"body is not valid safetensors: tensor {name!r} data_offsets {offsets!r}"
            )
        entries.append((name, code, shape, offsets[0], offsets[1]))
    return entries


def _is_size(value: Any) -> bool:
    # JSON true/false are not sizes (Python's bool is an int); 2**64 and up overflow usize.
    return type(value) is int and 0 <= value < 2**64


def _check_layout(entries: list[_Entry]) -> int:
    """Tensors must tile the data section without gap or overlap; returns its length."""
    end = 0
    for name, code, shape, start, stop in sorted(entries, key=lambda e: (e[3], e[4])):
        if start != end or stop < start:
            raise WireFormatError(
                f"body is not valid safetensors: tensor {name!r} at offsets [{start}, {stop}] "
                f"does not start where the previous one ends ({end})"
            )
        itemsize = 2 if code == "BF16" else _NUMPY_OF_CODE[code].itemsize
        if math.prod(shape) * itemsize != stop - start:
            raise WireFormatError(
                f"body is not valid safetensors: tensor {name!r} {code}{shape} does not fill "
                f"its {stop - start} bytes"
            )
        end = stop
    return end
