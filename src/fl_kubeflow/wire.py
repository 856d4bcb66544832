"""Weights on the wire: safetensors bytes, never JSON numbers, never pickle.

A model is an ordered mapping of tensor name to numpy array. safetensors stores
names in its JSON header, so each side rebuilds the mapping by name; the order a
framework needs is the trainer's concern (it sorts by name).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

Weights = dict[str, np.ndarray]

CONTENT_TYPE = "application/vnd.safetensors"


class WireFormatError(ValueError):
    """The bytes are not a well-formed safetensors file."""


def encode(weights: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise weights to safetensors bytes."""
    arrays = {name: np.ascontiguousarray(value) for name, value in weights.items()}
    return _st_save(arrays, metadata=dict(metadata) if metadata else None)


def decode(data: bytes) -> Weights:
    """Parse safetensors bytes into arrays; any malformation raises WireFormatError."""
    if len(data) < 8:
        raise WireFormatError(f"body of {len(data)} bytes is too short to be safetensors")
    try:
        return dict(_st_load(bytes(data)))
    except (SafetensorError, ValueError, TypeError, OverflowError) as exc:
        raise WireFormatError(f"body is not valid safetensors: {exc}") from exc


def describe(weights: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype name): the model's signature that every update must match."""
    return {name: (tuple(a.shape), a.dtype.name) for name, a in weights.items()}


def nbytes(weights: Mapping[str, np.ndarray]) -> int:
    """Total tensor bytes."""
    return sum(int(a.nbytes) for a in weights.values())
