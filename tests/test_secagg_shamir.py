"""Shamir sharing of 32-byte secrets over GF(2**521 - 1)."""

from __future__ import annotations

import itertools
import secrets

import pytest

from fl_kubeflow.secagg import shamir
from fl_kubeflow.secagg.shamir import PRIME, SHARE_BYTES, ShareError


@pytest.mark.parametrize(("n", "t"), [(1, 1), (3, 2), (5, 3), (6, 6), (7, 1)])
def test_any_threshold_subset_rebuilds_the_secret(n, t):
    secret = secrets.token_bytes(32)
    xs = [3 * i + 1 for i in range(n)]
    shares = shamir.split(secret, t, xs)
    assert sorted(shares) == xs and all(len(v) == SHARE_BYTES for v in shares.values())
    for size in range(t, n + 1):
        for subset in itertools.combinations(xs, size):
            assert shamir.combine({x: shares[x] for x in subset}, t) == secret


def test_fewer_than_the_threshold_is_refused():
    shares = shamir.split(bytes(32), 3, [1, 2, 3])
    with pytest.raises(ShareError, match="2 shares, 3 needed"):
        shamir.combine({1: shares[1], 2: shares[2]}, 3)


def _tampered(value: bytes) -> bytes:
    return (int.from_bytes(value, "big") ^ 1).to_bytes(SHARE_BYTES, "big")


def test_a_tampered_share_among_more_than_the_threshold_is_found():
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, 3, range(1, 6))
    for x in shares:
        bad = {**shares, x: _tampered(shares[x])}
        with pytest.raises(ShareError, match="does not lie on the polynomial"):
            shamir.combine(bad, 3)


def test_a_tampered_share_among_exactly_the_threshold_gives_no_32_byte_secret():
    # With a random value in one share the interpolated constant is a random field
    # element: below 2**256 with probability 2**-265. (A small change of a share
    # changes the secret by a small multiple, which t shares cannot tell.)
    shares = shamir.split(secrets.token_bytes(32), 3, [1, 2, 3])
    forged = (secrets.randbelow(PRIME)).to_bytes(SHARE_BYTES, "big")
    with pytest.raises(ShareError, match="not 32 bytes"):
        shamir.combine({**shares, 2: forged}, 3)


def test_one_share_of_two_is_consistent_with_every_secret():
    # For t = 2 the share (x, y) lies on f(z) = s' + (y - s') / x * z for any s': the
    # second share that f gives rebuilds s', so the first says nothing about the secret.
    x, y = 5, shamir.split(secrets.token_bytes(32), 2, [5, 7])[5]
    value = int.from_bytes(y, "big")
    for candidate in (bytes(32), b"\xff" * 32, secrets.token_bytes(32)):
        s = int.from_bytes(candidate, "big")
        slope = (value - s) * pow(x, -1, PRIME) % PRIME
        other = (s + slope * 9) % PRIME
        rebuilt = shamir.combine({x: y, 9: other.to_bytes(SHARE_BYTES, "big")}, 2)
        assert rebuilt == candidate


def test_shares_are_fresh_each_split():
    secret = secrets.token_bytes(32)
    assert shamir.split(secret, 2, [1, 2]) != shamir.split(secret, 2, [1, 2])
    # Threshold 1 is the secret itself at every point: nothing to randomise.
    assert shamir.split(secret, 1, [4])[4] == secret.rjust(SHARE_BYTES, b"\0")


@pytest.mark.parametrize(
    "shares",
    [
        {0: bytes(SHARE_BYTES), 1: bytes(SHARE_BYTES)},
        {1: bytes(SHARE_BYTES - 1), 2: bytes(SHARE_BYTES)},
        {1: PRIME.to_bytes(SHARE_BYTES, "big"), 2: bytes(SHARE_BYTES)},
    ],
)
def test_a_malformed_share_is_refused(shares):
    with pytest.raises(ShareError):
        shamir.combine(shares, 2)


@pytest.mark.parametrize(
    ("secret", "t", "xs"),
    [(bytes(31), 1, [1]), (bytes(32), 0, [1]), (bytes(32), 3, [1, 2]), (bytes(32), 1, [1, 1])],
)
def test_split_refuses_bad_arguments(secret, t, xs):
    with pytest.raises(ValueError):
        shamir.split(secret, t, xs)


def test_split_refuses_points_outside_the_field():
    with pytest.raises(ValueError, match=r"1\.\.PRIME-1"):
        shamir.split(bytes(32), 1, [PRIME])
