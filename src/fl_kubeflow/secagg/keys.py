"""Key agreement, the pairwise mask seeds, and the encryption of shares to a neighbour.

X25519 for agreement, HKDF-SHA256 to turn an agreement into a key (with a label per
use and the round, so no key serves two purposes or two rounds), AES-256-GCM for
shares with the round and both client ids as associated data (a share cannot be
replayed to another client or round). All from the ``cryptography`` package.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fl_kubeflow.secagg.shamir import SHARE_BYTES

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
# A ciphertext: nonce, two Shamir shares (shamir.SHARE_BYTES each), GCM tag.
CIPHERTEXT_BYTES = NONCE_BYTES + 2 * SHARE_BYTES + TAG_BYTES
# HKDF labels: one per use of an agreement, so no key serves two purposes.
_PAIR_MASK_LABEL = b"fl-kubeflow secagg pair mask v1"
_SHARE_KEY_LABEL = b"fl-kubeflow secagg share encryption v1"


class DecryptionError(ValueError):
    """A ciphertext that does not decrypt for this sender, receiver and round."""


@dataclass(frozen=True, repr=False)
class KeyPair:
    """An X25519 key pair; ``private`` is its 32 raw bytes (never logged)."""

    private: bytes
    public: bytes


def generate() -> KeyPair:
    """A fresh X25519 key pair."""
    # From secrets rather than X25519PrivateKey.generate (OpenSSL's generator): the
    # one source of randomness this package uses. Any 32 bytes are a valid key.
    private = secrets.token_bytes(KEY_BYTES)
    return KeyPair(private=private, public=public_of(private))


def public_of(private: bytes) -> bytes:
    """The public key of a raw X25519 private key (ValueError if malformed)."""
    return _private_key(private).public_key().public_bytes_raw()


def pair_seed(private: bytes, peer_public: bytes, server_round: int) -> bytes:
    """The 32-byte seed of the pairwise mask between two clients for ``server_round``:
    the same from either side (each with its own private key and the other's public)."""
    return _derive(private, peer_public, _PAIR_MASK_LABEL, server_round)


def share_key(private: bytes, peer_public: bytes, server_round: int) -> bytes:
    """The AES-256-GCM key of the shares two clients send each other in ``server_round``:
    the same both ways (each with its own private key and the other's public), so a
    client that holds it for the shares it sends opens the ones it gets with it too.

    Raises:
        ValueError: a malformed key, or a peer key of low order.
    """
    return _derive(private, peer_public, _SHARE_KEY_LABEL, server_round)


def encrypt_shares(
    private: bytes,
    peer_public: bytes,
    server_round: int,
    sender: str,
    receiver: str,
    self_mask_share: bytes,
    mask_key_share: bytes,
) -> bytes:
    """Encrypt ``sender``'s two shares for ``receiver`` (CIPHERTEXT_BYTES).

    Raises:
        ValueError: a share that is not shamir.SHARE_BYTES, or a malformed key.
    """
    key = share_key(private, peer_public, server_round)
    return seal_shares(key, server_round, sender, receiver, self_mask_share, mask_key_share)


def seal_shares(
    key: bytes,
    server_round: int,
    sender: str,
    receiver: str,
    self_mask_share: bytes,
    mask_key_share: bytes,
) -> bytes:
    """``encrypt_shares`` under the pair's ``share_key``.

    Raises:
        ValueError: a share that is not shamir.SHARE_BYTES.
    """
    if len(self_mask_share) != SHARE_BYTES or len(mask_key_share) != SHARE_BYTES:
        raise ValueError(f"each share is {SHARE_BYTES} bytes")
    # A fresh random nonce per message: a key serves one round, but a client may
    # resend its shares.
    nonce = secrets.token_bytes(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(
        nonce, self_mask_share + mask_key_share, _associated(server_round, sender, receiver)
    )
    return nonce + sealed


def decrypt_shares(
    private: bytes,
    peer_public: bytes,
    server_round: int,
    sender: str,
    receiver: str,
    ciphertext: bytes,
) -> tuple[bytes, bytes]:
    """The two shares ``sender`` encrypted for ``receiver`` (self mask, mask key).

    Raises:
        DecryptionError: wrong size, key, round, sender or receiver, or tampered.
    """
    try:
        key = share_key(private, peer_public, server_round)
    except ValueError:
        raise DecryptionError(
            f"shares from {sender} to {receiver} do not decrypt for round {server_round}"
        ) from None
    return open_shares(key, server_round, sender, receiver, ciphertext)


def open_shares(
    key: bytes, server_round: int, sender: str, receiver: str, ciphertext: bytes
) -> tuple[bytes, bytes]:
    """``decrypt_shares`` under the pair's ``share_key``.

    Raises:
        DecryptionError: wrong size, key, round, sender or receiver, or tampered.
    """
    if len(ciphertext) != CIPHERTEXT_BYTES:
        raise DecryptionError(
            f"shares from {sender}: {len(ciphertext)} bytes, not {CIPHERTEXT_BYTES}"
        )
    try:
        plain = AESGCM(key).decrypt(
            ciphertext[:NONCE_BYTES],
            ciphertext[NONCE_BYTES:],
            _associated(server_round, sender, receiver),
        )
    except (InvalidTag, ValueError):
        raise DecryptionError(
            f"shares from {sender} to {receiver} do not decrypt for round {server_round}"
        ) from None
    return plain[:SHARE_BYTES], plain[SHARE_BYTES:]


def _private_key(private: bytes) -> X25519PrivateKey:
    """``private`` as a key (ValueError if it is not 32 bytes)."""
    if not isinstance(private, bytes) or len(private) != KEY_BYTES:
        raise ValueError(f"an X25519 private key is {KEY_BYTES} bytes")
    return X25519PrivateKey.from_private_bytes(private)


def _derive(private: bytes, peer_public: bytes, label: bytes, server_round: int) -> bytes:
    """A 32-byte key for ``label`` and ``server_round`` from the X25519 agreement.

    Raises:
        ValueError: a malformed key, or a peer key of low order (all-zero agreement).
    """
    if not isinstance(peer_public, bytes) or len(peer_public) != KEY_BYTES:
        raise ValueError(f"an X25519 public key is {KEY_BYTES} bytes")
    shared = _private_key(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    info = label + server_round.to_bytes(8, "big")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def _associated(server_round: int, sender: str, receiver: str) -> bytes:
    """The associated data binding a ciphertext to its round and direction."""
    parts = [str(server_round).encode(), sender.encode(), receiver.encode()]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)
