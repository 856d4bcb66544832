"""Shamir secret sharing of 32-byte secrets over the prime field GF(2**521 - 1).

Small and textbook (a random polynomial of degree t - 1 with the secret as its
constant term; Lagrange interpolation at 0), over a Mersenne prime larger than any
32-byte secret. Coefficients come from ``secrets``. ``combine`` uses t shares and
checks that every further one lies on the same polynomial, so a wrong share is
found rather than silently giving a wrong secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

PRIME = 2**521 - 1
SECRET_BYTES = 32
# A share's value, big-endian: 521 bits.
SHARE_BYTES = 66


class ShareError(ValueError):
    """Too few shares, or shares that do not lie on one polynomial."""


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> dict[int, bytes]:
    """Shares of ``secret`` (SECRET_BYTES) at the points ``xs`` (distinct, 1..PRIME-1),
    any ``threshold`` of which rebuild it; fewer reveal nothing about it."""
    raise NotImplementedError


def combine(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (point -> value).

    Raises:
        ShareError: fewer than ``threshold`` shares, a malformed one, or shares that
            do not all lie on one polynomial of degree ``threshold - 1``.
    """
    raise NotImplementedError
