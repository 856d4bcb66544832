"""The masks: AES-256-CTR streams added modulo 2**bits, and that a masked input looks uniform."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fl_kubeflow.secagg import keys, masks
from fl_kubeflow.secagg.params import SecAggParams
from fl_kubeflow.secagg.quantise import Quantiser

stats = pytest.importorskip("scipy.stats")

# Fixed seeds and inputs: each statistical verdict below is deterministic (never
# flaky); ALPHA is the significance each test is judged at.
ALPHA = 1e-4
ELEMENTS = 1_000_000


def _seed(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def _stream(seed: bytes, nbytes: int) -> bytes:
    """The doc's PRG written out in one call: AES-256-CTR, key HKDF(seed), counter 0."""
    info = b"fl-kubeflow secagg mask stream v1"
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(seed)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return encryptor.update(bytes(nbytes)) + encryptor.finalize()


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_the_mask_is_the_aes_ctr_stream_read_little_endian(dtype):
    length = 2 * masks.CHUNK + 5
    expected = np.frombuffer(
        _stream(_seed("a"), length * np.dtype(dtype).itemsize),
        f"<{'u4' if dtype == np.uint32 else 'u8'}",
    )
    got = masks.mask(length, np.dtype(dtype), _seed("a"))
    assert got.dtype == dtype and np.array_equal(got, expected)
    assert np.array_equal(masks.mask(7, np.dtype(dtype), _seed("a")), expected[:7])
    assert not np.array_equal(masks.mask(7, np.dtype(dtype), _seed("b")), expected[:7])


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_apply_mask_adds_and_subtracts_modulo_2_to_the_bits(dtype):
    info = np.iinfo(dtype)
    vector = np.array([0, 1, info.max, info.max - 1, 12345] * 30_000, dtype)
    original = vector.copy()
    stream = masks.mask(len(vector), np.dtype(dtype), _seed("m"))
    masks.apply_mask(vector, _seed("m"), 1)
    modulus = int(info.max) + 1
    for i in (0, 2, 3, len(vector) - 1):
        assert int(vector[i]) == (int(original[i]) + int(stream[i])) % modulus
    masks.apply_mask(vector, _seed("m"), -1)
    assert np.array_equal(vector, original)


def test_pair_masks_cancel_in_the_sum():
    a, b = keys.KeyPair(bytes([1]) * 32, b""), keys.KeyPair(bytes([2]) * 32, b"")
    a_public, b_public = keys.public_of(a.private), keys.public_of(b.private)
    total = np.zeros(1000, np.uint32)
    mine, theirs = total.copy(), total.copy()
    masks.apply_mask(mine, keys.pair_seed(a.private, b_public, 1), 1)
    masks.apply_mask(theirs, keys.pair_seed(b.private, a_public, 1), -1)
    assert mine.any()
    assert not (mine + theirs).any()


@pytest.mark.parametrize(
    ("vector", "seed", "sign"),
    [
        (np.zeros(4, np.int32), bytes(32), 1),
        (np.zeros(4, np.float32), bytes(32), 1),
        (np.zeros((2, 2), np.uint32), bytes(32), 1),
        (np.zeros(8, np.uint32)[::2], bytes(32), 1),
        (np.zeros(4, np.uint32), bytes(31), 1),
        (np.zeros(4, np.uint32), bytes(32), 0),
    ],
)
def test_apply_mask_refuses_what_it_cannot_mask(vector, seed, sign):
    with pytest.raises(ValueError):
        masks.apply_mask(vector, seed, sign)
    frozen = np.zeros(4, np.uint32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        masks.apply_mask(frozen, bytes(32), 1)


def _client_input() -> np.ndarray:
    """What one client sends: its quantised, weighted change, not yet masked."""
    change = np.random.default_rng(16).normal(0.0, 0.01, ELEMENTS - 1)
    vector, _ = Quantiser(SecAggParams()).encode(change, 250)
    return vector


def _masked() -> np.ndarray:
    """One client's masked input with its self mask and two neighbours' pair masks."""
    vector = _client_input()
    me = bytes([7]) * 32
    masks.apply_mask(vector, _seed("self mask"), 1)
    for peer, sign in ((bytes([8]) * 32, 1), (bytes([9]) * 32, -1)):
        masks.apply_mask(vector, keys.pair_seed(me, keys.public_of(peer), 3), sign)
    return vector


def _uniformity(vector: np.ndarray) -> dict[str, float]:
    """p-values that uint32 ``vector`` is uniform: its bytes, its bits, its values (KS)."""
    n = len(vector)
    byte_counts = np.bincount(vector.view(np.uint8), minlength=256)
    bit_ones = np.array([np.count_nonzero(vector & np.uint32(1 << b)) for b in range(32)])
    bit_statistic = float((((bit_ones - n / 2) ** 2) / (n / 4)).sum())
    return {
        "bytes": float(stats.chisquare(byte_counts).pvalue),
        "bits": float(stats.chi2.sf(bit_statistic, 32)),
        "values": float(stats.kstest(vector / 2.0**32, "uniform").pvalue),
    }


@pytest.mark.parametrize(
    ("make", "uniform"),
    [
        pytest.param(_masked, True, id="masked"),
        pytest.param(_client_input, False, id="unmasked"),
        # A mask one bit short of uniform: the same tests must see it too.
        pytest.param(lambda: _masked() & np.uint32(0x7FFFFFFF), False, id="top-bit-clear"),
    ],
)
def test_a_masked_input_is_indistinguishable_from_uniform(make, uniform):
    pvalues = _uniformity(make())
    if uniform:
        assert min(pvalues.values()) > ALPHA, pvalues
    else:
        assert max(pvalues.values()) < ALPHA, pvalues
