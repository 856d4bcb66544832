"""Key agreement, pairwise seeds, share encryption, and binary values in JSON."""

from __future__ import annotations

import pytest

from fl_kubeflow.secagg import keys, messages
from fl_kubeflow.secagg.keys import CIPHERTEXT_BYTES, DecryptionError
from fl_kubeflow.secagg.shamir import SHARE_BYTES

B_SHARE = bytes(range(SHARE_BYTES))
S_SHARE = bytes(range(100, 100 + SHARE_BYTES))


def test_generate_gives_matching_fresh_pairs():
    a, b = keys.generate(), keys.generate()
    assert len(a.private) == len(a.public) == keys.KEY_BYTES
    assert keys.public_of(a.private) == a.public
    assert a.private != b.private and a.public != b.public
    assert a.private.hex() not in repr(a)
    with pytest.raises(ValueError):
        keys.public_of(bytes(31))


def test_pair_seed_is_the_same_both_ways_and_new_each_round_and_pair():
    a, b, c = keys.generate(), keys.generate(), keys.generate()
    seed = keys.pair_seed(a.private, b.public, 4)
    assert len(seed) == 32
    assert keys.pair_seed(b.private, a.public, 4) == seed
    assert keys.pair_seed(a.private, b.public, 5) != seed
    assert keys.pair_seed(a.private, c.public, 4) != seed
    # A low-order point makes an all-zero agreement: refused, not a known seed.
    with pytest.raises(ValueError):
        keys.pair_seed(a.private, bytes(32), 4)


@pytest.fixture(scope="module")
def sealed():
    sender, receiver = keys.generate(), keys.generate()
    ciphertext = keys.encrypt_shares(
        sender.private, receiver.public, 3, "alice", "bob", B_SHARE, S_SHARE
    )
    return sender, receiver, ciphertext


def test_encrypted_shares_decrypt_for_their_receiver(sealed):
    sender, receiver, ciphertext = sealed
    assert len(ciphertext) == CIPHERTEXT_BYTES
    opened = keys.decrypt_shares(receiver.private, sender.public, 3, "alice", "bob", ciphertext)
    assert opened == (B_SHARE, S_SHARE)
    again = keys.encrypt_shares(
        sender.private, receiver.public, 3, "alice", "bob", B_SHARE, S_SHARE
    )
    assert again != ciphertext  # a fresh nonce


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x80]) + data[at + 1 :]


@pytest.mark.parametrize(
    "change",
    [
        *("receiver key", "sender key", "round", "sender id", "receiver id", "direction"),
        *("nonce", "body", "tag", "short", "long"),
    ],
)
def test_anything_else_fails_to_decrypt(sealed, change):
    sender, receiver, ciphertext = sealed
    args = [receiver.private, sender.public, 3, "alice", "bob", ciphertext]
    other = keys.generate()
    if change == "receiver key":
        args[0] = other.private
    elif change == "sender key":
        args[1] = other.public
    elif change == "round":
        args[2] = 4
    elif change == "sender id":
        args[3] = "mallory"
    elif change == "receiver id":
        args[4] = "carol"
    elif change == "direction":
        args[3], args[4] = "bob", "alice"
    elif change == "nonce":
        args[5] = _flip(ciphertext, 0)
    elif change == "body":
        args[5] = _flip(ciphertext, keys.NONCE_BYTES + 70)
    elif change == "tag":
        args[5] = _flip(ciphertext, CIPHERTEXT_BYTES - 1)
    elif change == "short":
        args[5] = ciphertext[:-1]
    else:
        args[5] = ciphertext + b"\0"
    with pytest.raises(DecryptionError):
        keys.decrypt_shares(*args)


def test_encrypt_refuses_shares_of_another_size():
    a, b = keys.generate(), keys.generate()
    with pytest.raises(ValueError, match="66 bytes"):
        keys.encrypt_shares(a.private, b.public, 1, "a", "b", B_SHARE[:-1], S_SHARE)


def test_messages_round_trip_and_refuse_what_is_not_the_size():
    value = bytes(range(32))
    text = messages.encode(value)
    assert messages.decode(text, 32, "key") == value
    for bad, why in [
        (messages.encode(value[:-1]), "32 bytes"),
        (text[:-2] + "!=", "base64"),
        (32, "base64 text"),
        (messages.encode(value * 100), "32 bytes"),
    ]:
        with pytest.raises(ValueError, match=why):
            messages.decode(bad, 32, "key")


def test_one_share_key_serves_both_directions_of_a_pair_and_round(sealed):
    """``share_key`` is the same from either end: a client seals what it sends and opens
    what it gets with one agreement; ``seal_shares``/``open_shares`` under it are
    ``encrypt_shares``/``decrypt_shares``; another round's key opens nothing."""
    sender, receiver, ciphertext = sealed
    key = keys.share_key(receiver.private, sender.public, 3)
    assert keys.share_key(sender.private, receiver.public, 3) == key
    assert keys.open_shares(key, 3, "alice", "bob", ciphertext) == (B_SHARE, S_SHARE)
    back = keys.seal_shares(key, 3, "bob", "alice", S_SHARE, B_SHARE)
    opened = keys.decrypt_shares(sender.private, receiver.public, 3, "bob", "alice", back)
    assert opened == (S_SHARE, B_SHARE)
    other_round = keys.share_key(receiver.private, sender.public, 4)
    assert other_round != key
    with pytest.raises(DecryptionError):
        keys.open_shares(other_round, 3, "alice", "bob", ciphertext)
    with pytest.raises(DecryptionError):
        keys.decrypt_shares(receiver.private, bytes(32), 3, "alice", "bob", ciphertext)
