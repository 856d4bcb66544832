"""Key agreement, the pairwise mask seeds, and the encryption of shares to a neighbour.

X25519 for agreement, HKDF-SHA256 to turn an agreement into a key (with a label per
use and the round, so no key serves two purposes or two rounds), AES-256-GCM for
shares with the round and both client ids as associated data (a share cannot be
replayed to another client or round). All from the ``cryptography`` package.
"""

from __future__ import annotations

from dataclasses import dataclass

KEY_BYTES = 32
NONCE_BYTES = 12
# A ciphertext: nonce, two Shamir shares (shamir.SHARE_BYTES each), GCM tag.
CIPHERTEXT_BYTES = NONCE_BYTES + 2 * 66 + 16


class DecryptionError(ValueError):
    """A ciphertext that does not decrypt for this sender, receiver and round."""


@dataclass(frozen=True, repr=False)
class KeyPair:
    """An X25519 key pair; ``private`` is its 32 raw bytes (never logged)."""

    private: bytes
    public: bytes


def generate() -> KeyPair:
    """A fresh X25519 key pair."""
    raise NotImplementedError


def public_of(private: bytes) -> bytes:
    """The public key of a raw X25519 private key (ValueError if malformed)."""
    raise NotImplementedError


def pair_seed(private: bytes, peer_public: bytes, server_round: int) -> bytes:
    """The 32-byte seed of the pairwise mask between two clients for ``server_round``:
    the same from either side (each with its own private key and the other's public)."""
    raise NotImplementedError


def encrypt_shares(
    private: bytes,
    peer_public: bytes,
    server_round: int,
    sender: str,
    receiver: str,
    self_mask_share: bytes,
    mask_key_share: bytes,
) -> bytes:
    """Encrypt ``sender``'s two shares for ``receiver`` (CIPHERTEXT_BYTES)."""
    raise NotImplementedError


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
    raise NotImplementedError
