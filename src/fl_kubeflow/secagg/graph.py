"""Who shares with whom: a k-regular graph over a round's roster, the same at both ends.

The Harary graph H(n, k) (each client joined to the k/2 nearest on either side of
a ring; for odd k = n - 1, to everyone) over the roster in an order shuffled by
the roster's own hash, so neither the server nor a client picks anyone's
neighbours, and every client can compute the graph itself.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence


def roster_seed(roster: Sequence[tuple[str, bytes, bytes]]) -> bytes:
    """SHA-256 over the roster (client id, encryption key, masking key; sorted by id)."""
    digest = hashlib.sha256(b"fl-kubeflow secagg roster v1")
    for client_id, encryption_key, masking_key in sorted(roster):
        # Length-prefixed fields: no two rosters hash the same bytes.
        for field in (client_id.encode(), encryption_key, masking_key):
            digest.update(len(field).to_bytes(4, "big") + field)
    return digest.digest()


def neighbours(client_ids: Sequence[str], k: int, seed: bytes) -> dict[str, list[str]]:
    """Each client's k neighbours (sorted), for ``client_ids`` (sorted, distinct).

    Symmetric (j in neighbours[i] iff i in neighbours[j]) and without self-loops; k
    even and below n, or k = n - 1 (complete).

    Raises:
        ValueError: ids not sorted and distinct, or no such k for that many.
    """
    ids = list(client_ids)
    n = len(ids)
    if any(a >= b for a, b in itertools.pairwise(ids)):
        raise ValueError("client ids must be sorted and distinct")
    if not (k == n - 1 or (k % 2 == 0 and 0 < k < n)):
        raise ValueError(f"k must be even and below n = {n}, or n - 1; got {k}")
    if k == n - 1:
        return {c: [o for o in ids if o != c] for c in ids}
    # The ring's order: by a keyed hash of each id (ties, impossible in practice, by id).
    ring = sorted(ids, key=lambda c: (hashlib.sha256(seed + c.encode()).digest(), c))
    half = k // 2
    position = {c: p for p, c in enumerate(ring)}
    return {
        c: sorted(ring[(position[c] + d) % n] for d in range(-half, half + 1) if d) for c in ids
    }
