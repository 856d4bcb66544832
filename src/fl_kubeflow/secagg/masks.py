"""The masks: AES-128-CTR keystreams, read as unsigned integers, added in place.

A mask is PRG(seed): AES-128-CTR under a key derived from the seed (HKDF, a label
of its own), nonce zero (each key is used for one stream), over as many bytes as
the vector has. A 128-bit key matches the X25519 agreement the seeds come from
(about 128-bit security), and AES-128 has 10 rounds to AES-256's 14: a mask of 1M
elements 0.52 instead of 0.80 ms here, and the masks are most of a secure round's
CPU (benchmarks/secagg_primitives.py). It is made a chunk at a time into a reused
buffer and added to (or subtracted from) the vector with numpy's wrapping unsigned
arithmetic: modulo 2**32 for uint32, 2**64 for uint64. Nothing model-sized is allocated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# Elements per chunk of keystream: a few hundred KiB, in cache while it is added.
CHUNK = 1 << 16
SEED_BYTES = 32
STREAM_KEY_BYTES = 16  # AES-128
STREAM_LABEL = b"fl-kubeflow secagg mask stream v2"  # v1 was AES-256
_BLOCK = 16
# Offsets into a masked vector are whole AES blocks of uint32 (and of uint64) elements.
ALIGN = _BLOCK // 4
_DTYPES = (np.dtype(np.uint32), np.dtype(np.uint64))


def apply_mask(vector: np.ndarray, seed: bytes, sign: int) -> None:
    """``vector += sign * PRG(seed)`` in place, element-wise modulo 2**bits.

    Args:
        vector: One-dimensional uint32 or uint64, C-contiguous.
        seed: 32 bytes.
        sign: +1 or -1.

    Raises:
        ValueError: a vector, seed or sign not as above.
    """
    apply_masks(vector, [(seed, sign)])


def apply_masks(vector: np.ndarray, streams: Sequence[tuple[bytes, int]], offset: int = 0) -> None:
    """``vector += sign * PRG(seed)`` for every (seed, sign) of ``streams``, in one pass.

    The same as ``apply_mask`` for each in turn, but each chunk of the vector stays
    in cache while every stream is added to it: for a client's k + 1 masks or the
    server's unmasking, the vector crosses memory once instead of once per stream
    (8 streams at P = 10M: 90 instead of 151 ms of CPU time, benchmarks/secagg_primitives.py).

    Args:
        vector: One-dimensional uint32 or uint64, C-contiguous.
        streams: (32-byte seed, +1 or -1) pairs.
        offset: Where ``vector`` starts in the masked vector: it gets the masks'
            elements from there on (a stripe of the server's sum), a multiple of
            ``ALIGN`` elements.

    Raises:
        ValueError: a vector, seed, sign or offset not as above.
    """
    if vector.ndim != 1 or vector.dtype not in _DTYPES or not vector.flags.c_contiguous:
        raise ValueError("a masked vector is one-dimensional, C-contiguous uint32 or uint64")
    if not vector.flags.writeable:
        raise ValueError("a masked vector must be writable")
    for _, sign in streams:
        if sign not in (1, -1):
            raise ValueError(f"sign must be +1 or -1, got {sign}")
    if offset < 0 or offset % ALIGN:
        raise ValueError(f"a mask's offset is a non-negative multiple of {ALIGN}, got {offset}")
    # CTR's counter is the keystream's block number: the stream's part from ``offset``
    # on is AES-CTR started at that block.
    counter = (offset * vector.dtype.itemsize // _BLOCK).to_bytes(_BLOCK, "big")
    ciphers = [
        (_cipher(seed, counter).encryptor(), np.add if sign == 1 else np.subtract)
        for seed, sign in streams
    ]
    width = CHUNK * vector.dtype.itemsize
    # CTR's output is as long as its input; update_into still wants a block's slack.
    out = bytearray(width + _BLOCK - 1)
    zeros = bytes(width)
    # The keystream is read little-endian whatever the host: the same mask everywhere.
    stream = np.frombuffer(out, vector.dtype.newbyteorder("<"), count=CHUNK)
    for start in range(0, len(vector), CHUNK):
        part = vector[start : start + CHUNK]
        n = len(part)
        data = zeros if n == CHUNK else zeros[: n * vector.dtype.itemsize]
        for encryptor, combine in ciphers:
            encryptor.update_into(data, out)
            combine(part, stream[:n], out=part)


def mask(length: int, dtype: np.dtype, seed: bytes) -> np.ndarray:
    """PRG(seed) as a new array (for tests and small vectors)."""
    vector = np.zeros(length, dtype)
    apply_mask(vector, seed, 1)
    return vector


def _cipher(seed: bytes, counter: bytes) -> Cipher:
    """AES-128-CTR under HKDF(seed), from block ``counter`` of its one stream (each key
    makes one stream, which starts at block zero)."""
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed is {SEED_BYTES} bytes")
    key = HKDF(
        algorithm=hashes.SHA256(), length=STREAM_KEY_BYTES, salt=None, info=STREAM_LABEL
    ).derive(seed)
    return Cipher(algorithms.AES(key), modes.CTR(counter))
