"""The masks: AES-128-CTR streams added modulo 2**bits, and that a masked input looks uniform."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fl_kubeflow.secagg import graph, keys, masks, shamir
from fl_kubeflow.secagg.params import SecAggParams, choose_graph
from fl_kubeflow.secagg.quantise import Quantiser, WeightError

stats = pytest.importorskip("scipy.stats")

# Fixed seeds and inputs: each statistical verdict below is deterministic (never
# flaky); ALPHA is the significance each test is judged at.
ALPHA = 1e-4
ELEMENTS = 1_000_000


def _seed(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def _pair(label: str) -> keys.KeyPair:
    private = _seed(label)
    return keys.KeyPair(private, keys.public_of(private))


def _stream(seed: bytes, nbytes: int) -> bytes:
    """The doc's PRG written out in one call: AES-128-CTR, key HKDF(seed), counter 0."""
    info = b"fl-kubeflow secagg mask stream v2"
    key = HKDF(algorithm=hashes.SHA256(), length=16, salt=None, info=info).derive(seed)
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
    a, b = _pair("a"), _pair("b")
    mine, theirs = np.zeros(1000, np.uint32), np.zeros(1000, np.uint32)
    masks.apply_mask(mine, keys.pair_seed(a.private, b.public, 1), 1)
    masks.apply_mask(theirs, keys.pair_seed(b.private, a.public, 1), -1)
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


def test_a_round_in_miniature_unmasks_the_survivors_sum_only():
    """The package end to end as docs/secure_aggregation.md runs it, without HTTP: six
    clients, one drops after the shares; the survivors' reveals remove every mask."""
    ids = [f"c{i}" for i in range(6)]
    server_round, quantiser = 2, Quantiser(SecAggParams())
    chosen = choose_graph(len(ids), 0.2, 0.1)
    # Fixed keys and seeds: the masked weight element below is always the same noise.
    c_keys = {i: _pair(f"c {i}") for i in ids}
    s_keys = {i: _pair(f"s {i}") for i in ids}
    roster = [(i, c_keys[i].public, s_keys[i].public) for i in ids]
    around = graph.neighbours(ids, chosen.k, graph.roster_seed(roster))
    position = {i: p + 1 for p, i in enumerate(ids)}
    self_seed = {i: _seed(f"b {i}") for i in ids}
    inbox: dict[str, dict[str, bytes]] = {i: {} for i in ids}
    for i in ids:
        points = [position[j] for j in around[i]]
        b_shares = shamir.split(self_seed[i], chosen.t, points)
        s_shares = shamir.split(s_keys[i].private, chosen.t, points)
        for j in around[i]:
            inbox[j][i] = keys.encrypt_shares(
                c_keys[i].private, c_keys[j].public, server_round, i, j,
                b_shares[position[j]], s_shares[position[j]],
            )  # fmt: skip
    rng = np.random.default_rng(6)
    changes = {i: rng.normal(0.0, 0.05, 500) for i in ids}
    weights = {i: int(w) for i, w in zip(ids, rng.integers(1, 50, len(ids)), strict=True)}
    dropped, survivors = "c3", [i for i in ids if i != "c3"]
    total = np.zeros(501, quantiser.dtype)
    for i in survivors:
        vector, _ = quantiser.encode(changes[i], weights[i])
        masks.apply_mask(vector, self_seed[i], 1)
        for j in around[i]:
            seed = keys.pair_seed(s_keys[i].private, s_keys[j].public, server_round)
            masks.apply_mask(vector, seed, 1 if i < j else -1)
        total += vector
    # Reveal: each survivor opens its inbox, one kind of share per neighbour.
    revealed: dict[str, dict[int, bytes]] = {i: {} for i in ids}
    for holder in survivors:
        for sender, sealed in inbox[holder].items():
            b_share, s_share = keys.decrypt_shares(
                c_keys[holder].private, c_keys[sender].public, server_round, sender, holder, sealed
            )
            revealed[sender][position[holder]] = s_share if sender == dropped else b_share
    with pytest.raises(WeightError):
        quantiser.decode(total)  # still masked: the weight element is noise
    for i in survivors:
        masks.apply_mask(total, shamir.combine(revealed[i], chosen.t), -1)
    private = shamir.combine(revealed[dropped], chosen.t)
    assert keys.public_of(private) == s_keys[dropped].public
    for j in around[dropped]:
        seed = keys.pair_seed(private, s_keys[j].public, server_round)
        masks.apply_mask(total, seed, -1 if j < dropped else 1)
    mean, weight = quantiser.decode(total)
    exact = np.average(
        np.stack([changes[i] for i in survivors]), axis=0, weights=[weights[i] for i in survivors]
    )
    assert weight == sum(weights[i] for i in survivors)
    assert np.abs(mean - exact).max() <= quantiser.error_bound


def test_apply_masks_is_apply_mask_for_each_stream():
    streams = [(_seed("x"), 1), (_seed("y"), -1), (_seed("x"), 1)]
    one_by_one = np.arange(masks.CHUNK + 3, dtype=np.uint64)
    together = one_by_one.copy()
    for seed, sign in streams:
        masks.apply_mask(one_by_one, seed, sign)
    masks.apply_masks(together, streams)
    assert np.array_equal(together, one_by_one)
    with pytest.raises(ValueError, match="sign"):
        masks.apply_masks(together, [(_seed("x"), 1), (_seed("y"), 2)])


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_a_mask_from_an_offset_is_the_streams_tail(dtype: type) -> None:
    """A stripe of a vector masked on its own (the server's striped and two-thread
    unmask) gets the same elements as the whole vector masked at once."""
    length = 3 * masks.CHUNK + 7
    whole = masks.mask(length, np.dtype(dtype), _seed("x"))
    for offset in (masks.ALIGN, masks.CHUNK, masks.CHUNK + masks.ALIGN, 2 * masks.CHUNK):
        part = np.zeros(length - offset, dtype)
        masks.apply_masks(part, [(_seed("x"), 1)], offset)
        assert np.array_equal(part, whole[offset:]), offset
    with pytest.raises(ValueError, match="offset"):
        masks.apply_masks(np.zeros(8, dtype), [(_seed("x"), 1)], masks.ALIGN + 1)
