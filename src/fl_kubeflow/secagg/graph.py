"""Who shares with whom: a k-regular graph over a round's roster, the same at both ends.

The Harary graph H(n, k) (each client joined to the k/2 nearest on either side of
a ring; for odd k = n - 1, to everyone) over the roster in an order shuffled by
the roster's own hash, so neither the server nor a client picks anyone's
neighbours, and every client can compute the graph itself.
"""

from __future__ import annotations

from collections.abc import Sequence


def roster_seed(roster: Sequence[tuple[str, bytes, bytes]]) -> bytes:
    """SHA-256 over the roster (client id, encryption key, masking key; sorted by id)."""
    raise NotImplementedError


def neighbours(client_ids: Sequence[str], k: int, seed: bytes) -> dict[str, list[str]]:
    """Each client's k neighbours (sorted), for ``client_ids`` (sorted, distinct).

    Symmetric (j in neighbours[i] iff i in neighbours[j]) and without self-loops; k
    even and below n, or k = n - 1 (complete).
    """
    raise NotImplementedError
