"""The masks: AES-256-CTR keystreams, read as unsigned integers, added in place.

A mask is PRG(seed): AES-256-CTR under a key derived from the seed (HKDF, a label
of its own), nonce zero (each key is used for one stream), over as many bytes as
the vector has. It is made a chunk at a time into a reused buffer and added to (or
subtracted from) the vector with numpy's wrapping unsigned arithmetic: modulo
2**32 for uint32, 2**64 for uint64. Nothing model-sized is allocated.
"""

from __future__ import annotations

import numpy as np

# Elements per chunk of keystream: a few hundred KiB, in cache while it is added.
CHUNK = 1 << 16


def apply_mask(vector: np.ndarray, seed: bytes, sign: int) -> None:
    """``vector += sign * PRG(seed)`` in place, element-wise modulo 2**bits.

    Args:
        vector: One-dimensional uint32 or uint64, C-contiguous.
        seed: 32 bytes.
        sign: +1 or -1.
    """
    raise NotImplementedError


def mask(length: int, dtype: np.dtype, seed: bytes) -> np.ndarray:
    """PRG(seed) as a new array (for tests and small vectors)."""
    raise NotImplementedError
