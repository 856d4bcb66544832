"""Shamir secret sharing of 32-byte secrets over the prime field GF(2**521 - 1).

Small and textbook (a random polynomial of degree t - 1 with the secret as its
constant term; Lagrange interpolation at 0), over a Mersenne prime larger than any
32-byte secret. Coefficients come from ``secrets``. ``combine`` uses t shares and
checks that every further one lies on the same polynomial, so a wrong share is
found rather than silently giving a wrong secret.

Why not a library's: pycryptodome's ``Crypto.Protocol.SecretSharing.Shamir`` shares
only 16-byte secrets over GF(2**128) (a 32-byte seed or X25519 key would need two
splits and their pairing), and would add a second cryptography library next to
``cryptography``, which has no secret sharing. The field arithmetic is Python's own
big integers (``pow(a, -1, PRIME)`` for inverses): nothing here is a cipher.

Why ``threshold - 1`` shares reveal nothing: for any ``threshold - 1`` points and
any candidate secret there is exactly one polynomial of degree ``threshold - 1``
through them with that constant term (``threshold`` points fix such a polynomial).
The coefficients are uniform, so each candidate is equally likely given the shares.
For ``threshold = 2``: one share ``(x, y)`` fits ``f(z) = s' + (y - s') / x * z`` for
every ``s'``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

PRIME = 2**521 - 1
SECRET_BYTES = 32
# A share's value, big-endian: 521 bits.
SHARE_BYTES = 66


class ShareError(ValueError):
    """Too few shares, or shares that do not lie on one polynomial."""


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> dict[int, bytes]:
    """Shares of ``secret`` (SECRET_BYTES) at the points ``xs`` (distinct, 1..PRIME-1),
    any ``threshold`` of which rebuild it; fewer reveal nothing about it.

    Raises:
        ValueError: a secret of another size, a threshold not in 1..len(xs), or
            points that are not distinct and in 1..PRIME-1.
    """
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret is {SECRET_BYTES} bytes, got {len(secret)}")
    points = list(xs)
    if len(set(points)) != len(points) or not all(
        isinstance(x, int) and 0 < x < PRIME for x in points
    ):
        raise ValueError("share points must be distinct integers in 1..PRIME-1")
    if not 1 <= threshold <= len(points):
        raise ValueError(f"threshold must be in 1..{len(points)}, got {threshold}")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _evaluate(coefficients, x).to_bytes(SHARE_BYTES, "big") for x in points}


def combine(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (point -> value).

    Raises:
        ShareError: fewer than ``threshold`` shares, a malformed one, or shares that
            do not all lie on one polynomial of degree ``threshold - 1``.
    """
    if threshold < 1:
        raise ShareError(f"threshold must be at least 1, got {threshold}")
    if len(shares) < threshold:
        raise ShareError(f"{len(shares)} shares, {threshold} needed")
    points: list[tuple[int, int]] = []
    for x, value in sorted(shares.items()):
        if not isinstance(x, int) or not 0 < x < PRIME:
            raise ShareError(f"share point {x!r} is not in 1..PRIME-1")
        if len(value) != SHARE_BYTES or (y := int.from_bytes(value, "big")) >= PRIME:
            raise ShareError(f"share at {x} is not a field element of {SHARE_BYTES} bytes")
        points.append((x, y))
    basis, rest = points[:threshold], points[threshold:]
    for x, y in rest:
        if _interpolate(basis, x) != y:
            raise ShareError(
                f"share at {x} does not lie on the polynomial of the first {threshold}"
            )
    secret = _interpolate(basis, 0)
    if secret >> (8 * SECRET_BYTES):
        raise ShareError(f"the shares' secret is not {SECRET_BYTES} bytes: wrong shares")
    return secret.to_bytes(SECRET_BYTES, "big")


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """The polynomial with these coefficients (constant first) at ``x``, modulo PRIME."""
    value = 0
    for c in reversed(coefficients):
        value = (value * x + c) % PRIME
    return value


def _interpolate(points: Sequence[tuple[int, int]], at: int) -> int:
    """The polynomial through ``points`` (distinct x) at ``at`` (Lagrange), modulo PRIME."""
    # One inverse for the whole sum: accumulate numerators and denominators as a
    # fraction (num / den), since inverses cost far more than multiplications.
    num, den = 0, 1
    for j, (xj, yj) in enumerate(points):
        n, d = yj, 1
        for m, (xm, _) in enumerate(points):
            if m != j:
                n = n * (at - xm) % PRIME
                d = d * (xj - xm) % PRIME
        num = (num * d + n * den) % PRIME
        den = den * d % PRIME
    return num * pow(den, -1, PRIME) % PRIME
