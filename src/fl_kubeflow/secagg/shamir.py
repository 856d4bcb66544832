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

import math
import secrets
from collections.abc import Callable, Mapping, Sequence

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
    interpolate = _interpolator(points[:threshold])
    for x, y in points[threshold:]:
        if interpolate(x) != y:
            raise ShareError(
                f"share at {x} does not lie on the polynomial of the first {threshold}"
            )
    secret = interpolate(0)
    if secret >> (8 * SECRET_BYTES):
        raise ShareError(f"the shares' secret is not {SECRET_BYTES} bytes: wrong shares")
    return secret.to_bytes(SECRET_BYTES, "big")


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """The polynomial with these coefficients (constant first) at ``x``, modulo PRIME."""
    value = 0
    for c in reversed(coefficients):
        value = (value * x + c) % PRIME
    return value


def _interpolator(points: Sequence[tuple[int, int]]) -> Callable[[int], int]:
    """The polynomial through ``points`` (distinct x), as a function modulo PRIME.

    Lagrange's form with its denominators inverted once: ``f(z) = sum_j a_j N_j(z)``,
    ``a_j = y_j / prod_{m != j} (x_j - x_m)``, ``N_j(z) = prod_{m != j} (z - x_m)``.
    Each evaluation then takes O(t) multiplications (prefix and suffix products)
    rather than O(t^2), which matters when the server rebuilds hundreds of secrets
    and checks each one's extra shares (t = 125 with 71 extra shares: ~40 ms on a
    loaded 2-core machine, benchmarks/secagg_primitives.py).
    """
    xs = [x for x, _ in points]
    # Share points are small (roster positions): the products are exact integers of
    # a few thousand bits, far cheaper than a reduction modulo PRIME at every step.
    denominators = [math.prod([xj - xm for xm in xs if xm != xj]) % PRIME for xj in xs]
    weights = [
        y * inverse % PRIME for (_, y), inverse in zip(points, _inverses(denominators), strict=True)
    ]

    def evaluate(z: int) -> int:
        factors = [z - x for x in xs]
        suffix = [1] * (len(xs) + 1)
        for j in range(len(xs) - 1, -1, -1):
            suffix[j] = suffix[j + 1] * factors[j]
        total, prefix = 0, 1
        for j, a in enumerate(weights):
            total += a * (prefix * suffix[j + 1])
            prefix *= factors[j]
        return total % PRIME

    return evaluate


def _inverses(values: Sequence[int]) -> list[int]:
    """Each value's inverse modulo PRIME, with one modular inversion (Montgomery's trick)."""
    running = [1]
    for v in values:
        running.append(running[-1] * v % PRIME)
    inverse = pow(running[-1], -1, PRIME)
    out = [0] * len(values)
    for j in range(len(values) - 1, -1, -1):
        out[j] = inverse * running[j] % PRIME
        inverse = inverse * values[j] % PRIME
    return out
