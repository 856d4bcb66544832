"""Checks of the models clients send: size, decoding, the global model's signature, values.

Pure functions, no state and no lock: the Federation calls them on an update's
request thread before taking the run's lock, so checking one update never holds
up another.
"""

from __future__ import annotations

import hashlib

import numpy as np

from fl_kubeflow import wire
from fl_kubeflow.server.errors import BadRequest, InvalidUpdate, TooLarge
from fl_kubeflow.wire import Weights

# Each tensor's shape and dtype name, as fixed by the first model (wire.describe).
Signature = dict[str, tuple[tuple[int, ...], str]]

_FINITE_SLICE = 1 << 16


def check_update_size(size: int, limit: int, *, counted: bool = True) -> None:
    """Refuse a model body over ``limit`` (max_update_bytes) with 413 too_large.

    Args:
        size: The body's length in bytes, or how much of it was read when it is not
            known in advance.
        limit: The largest body accepted.
        counted: Whether ``size`` is the body's whole length (and so worth naming).
    """
    if size > limit:
        what = f"body of {size} bytes" if counted else "body"
        raise TooLarge(f"{what} exceeds max_update_bytes={limit}", limit=limit)


# A digest reads at most this much of a body: whole bodies up to it, else evenly spread
# blocks (first and last included).
DIGEST_WHOLE_UP_TO = 1 << 16
DIGEST_BLOCK = 4096
DIGEST_BLOCKS = DIGEST_WHOLE_UP_TO // DIGEST_BLOCK


def digest(body: wire.Buffer) -> bytes:
    """What tells a resend of the same update from another: a SHA-256 of its length and
    of up to 64 KiB of it, in blocks spread evenly over the body (the first and the
    last included).

    Hashing every byte cost ~0.03 s per 40 MB update on the hot path (P = 10M, N = 8
    rounds ~15% slower), and a 1 MiB sample still ~0.35 ms per update of a small model
    (P = 100k: a tenth of the server's work for that update). A sample suffices: an
    honest retry repeats every byte, and a retrained update differs nearly everywhere;
    a different body that matches every sampled block is answered as a duplicate, which
    changes nothing either, since a resend is never folded.
    """
    view = memoryview(body).cast("B")
    size = len(view)
    hasher = hashlib.sha256(size.to_bytes(8, "little"))
    if size <= DIGEST_WHOLE_UP_TO:
        hasher.update(view)
    else:
        last = size - DIGEST_BLOCK
        for number in range(DIGEST_BLOCKS):
            start = number * last // (DIGEST_BLOCKS - 1)
            hasher.update(view[start : start + DIGEST_BLOCK])
    return hasher.digest()


def decode(body: wire.Buffer, limit: int, wire_dtype: str) -> Weights:
    """A safetensors body's tensors (views of it); 400 if it is not a model.

    Args:
        body: The request body.
        limit: The largest body accepted (max_update_bytes).
        wire_dtype: The server's wire dtype, which float32 tensors may arrive in.
    """
    check_update_size(len(body), limit)
    try:
        # Half-precision tensors come back as float32: the model's dtype is checked next.
        weights = wire.decode(body, wire_dtype=wire_dtype)
    except wire.WireFormatError as exc:
        raise BadRequest(str(exc)) from None
    if not weights:
        raise BadRequest("the safetensors body holds no tensors")
    return weights


def validated_initial(weights: Weights) -> Weights:
    """``weights``, if they can start a run: numeric tensors with finite values only."""
    for name, value in weights.items():
        if not np.issubdtype(value.dtype, np.number):
            raise InvalidUpdate(f"tensor {name!r} has non-numeric dtype {value.dtype}")
        if not np.all(np.isfinite(value)):
            raise InvalidUpdate(f"tensor {name!r} holds NaN or Inf values", tensor=name)
    return weights


def check_signature(weights: Weights, expected: Signature, what: str) -> None:
    """Refuse (422) tensors unlike the global model's, or holding NaN or Inf.

    Args:
        weights: The tensors to check.
        expected: The global model's signature.
        what: What the tensors are, for the message ("update", "aggregate").
    """
    if set(weights) != set(expected):
        missing = sorted(set(expected) - set(weights))[:5]
        extra = sorted(set(weights) - set(expected))[:5]
        raise InvalidUpdate(
            f"{what} tensors do not match the global model: missing {missing}, unexpected {extra}",
            missing=missing,
            unexpected=extra,
        )
    for name, value in weights.items():
        shape, dtype = expected[name]
        if tuple(value.shape) != shape or value.dtype.name != dtype:
            raise InvalidUpdate(
                f"{what} tensor {name!r} is {value.dtype.name}{list(value.shape)}; "
                f"the global model has {dtype}{list(shape)}",
                tensor=name,
            )
        if not all_finite(value):
            raise InvalidUpdate(f"{what} tensor {name!r} holds NaN or Inf values", tensor=name)


def all_finite(values: np.ndarray) -> bool:
    """np.isfinite(values).all(), slice by slice: no model-sized boolean array per update."""
    if values.dtype.kind not in "fc":  # integers and booleans are always finite
        return True
    flat = values.reshape(-1)
    if flat.size <= _FINITE_SLICE:
        return bool(np.isfinite(flat).all())
    mask = np.empty(_FINITE_SLICE, dtype=bool)
    for lo in range(0, flat.size, _FINITE_SLICE):
        piece = flat[lo : lo + _FINITE_SLICE]
        if not np.isfinite(piece, out=mask[: piece.size]).all():
            return False
    return True
