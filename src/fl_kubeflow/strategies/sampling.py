"""Client sampling: which joined clients train (or evaluate) in a round.

Flower's rule: ``max(min_clients, int(fraction * available))`` clients, drawn
uniformly without replacement. The draw depends only on (seed, round, stream) and
the set of ids, never on their order or on earlier draws, so a restarted server
samples the same clients again and fit and evaluate samples are independent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Separate random streams for the two samples of a round.
_STREAMS = {"fit": 0, "evaluate": 1}


def sample_size(num_available: int, fraction: float, min_clients: int) -> int:
    """How many of ``num_available`` clients a round asks: at least ``min_clients``, at most all."""
    if num_available < 0 or min_clients < 0:
        raise ValueError("num_available and min_clients must not be negative")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    wanted = max(min_clients, int(fraction * num_available))
    return min(num_available, max(1, wanted)) if num_available else 0


def sample_clients(
    client_ids: Sequence[str],
    fraction: float,
    min_clients: int,
    seed: int,
    server_round: int,
    *,
    stream: str = "fit",
) -> list[str]:
    """The sorted ids asked to take part in ``server_round``; deterministic in its arguments."""
    ids = sorted(set(client_ids))
    size = sample_size(len(ids), fraction, min_clients)
    if size == len(ids):
        return ids
    rng = np.random.default_rng([seed, server_round, _STREAMS[stream]])
    chosen = rng.choice(len(ids), size=size, replace=False)
    return sorted(ids[i] for i in chosen)
