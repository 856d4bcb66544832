"""Split one dataset's indices across federated clients (numpy only).

Two schemes:

* ``iid``: a seeded shuffle cut into near-equal shards, so every client sees the
  global label distribution.
* ``dirichlet:<alpha>``: label-skewed non-IID shards (Hsu et al. 2019, "Measuring the
  effects of non-identical data distribution"). For every class, the share each
  client gets is drawn from ``Dirichlet(alpha)``; small alpha (0.1) gives each
  client a few dominant classes, large alpha (100) approaches iid.

Every function is deterministic in its ``seed`` and returns one sorted index array
per client; the shards are disjoint and together cover every index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_MIN_SIZE = 10
DEFAULT_MAX_RETRIES = 100


@dataclass(frozen=True)
class PartitionSpec:
    """A parsed partition string: ``kind`` is "iid" or "dirichlet"; ``alpha`` for dirichlet."""

    kind: str
    alpha: float | None = None

    def __str__(self) -> str:
        return self.kind if self.alpha is None else f"{self.kind}:{self.alpha:g}"


def parse_partition(text: str) -> PartitionSpec:
    """Parse ``"iid"`` or ``"dirichlet:<alpha>"`` (alpha a finite number > 0).

    Raises:
        ValueError: naming the bad string and the accepted forms.
    """
    if not isinstance(text, str):
        raise ValueError(f"partition must be a string, got {type(text).__name__}")
    value = text.strip().lower()
    if value == "iid":
        return PartitionSpec("iid")
    if value.startswith("dirichlet:"):
        raw = value.split(":", 1)[1].strip()
        try:
            alpha = float(raw)
        except ValueError:
            raise ValueError(
                f"partition {text!r}: alpha {raw!r} is not a number (expected e.g. 'dirichlet:0.5')"
            ) from None
        if not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"partition {text!r}: alpha must be a finite number > 0")
        return PartitionSpec("dirichlet", alpha)
    raise ValueError(f"unknown partition {text!r}: expected 'iid' or 'dirichlet:<alpha>'")


def _check_counts(n: int, num_clients: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients > n:
        raise ValueError(f"cannot split {n} samples across {num_clients} clients")


def iid_partition(n: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into ``num_clients`` near-equal shards.

    Returns:
        One sorted int64 index array per client; sizes differ by at most one.
    """
    _check_counts(n, num_clients)
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(shard).astype(np.int64) for shard in np.array_split(order, num_clients)]


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    seed: int,
    min_size: int = DEFAULT_MIN_SIZE,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> list[np.ndarray]:
    """Label-skewed shards: per class, client shares drawn from ``Dirichlet(alpha)``.

    Draws are repeated (up to ``max_retries`` times, all from one seeded generator, so
    the result stays deterministic) until every client holds at least ``min_size``
    samples. As in the common reference implementations, a client that already
    holds its fair share ``n / num_clients`` gets no more of the next class, which
    keeps shard sizes from collapsing onto one client.

    Args:
        labels: 1-D integer class labels of the whole dataset.
        num_clients: number of shards.
        alpha: concentration (> 0); smaller is more skewed.
        seed: random seed.
        min_size: smallest acceptable shard.
        max_retries: draws to try before giving up.

    Returns:
        One sorted int64 index array per client.

    Raises:
        ValueError: bad arguments, or no draw met ``min_size`` (suggests a fix).
    """
    labels = np.asarray(labels).reshape(-1)
    n = labels.shape[0]
    _check_counts(n, num_clients)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"dirichlet alpha must be a finite number > 0, got {alpha}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    if num_clients * min_size > n:
        raise ValueError(
            f"cannot give each of {num_clients} clients at least {min_size} of {n} samples"
        )
    rng = np.random.default_rng(seed)
    class_indices = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    fair_share = n / num_clients
    smallest = 0
    for _ in range(max(1, max_retries)):
        shards: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        for idx in class_indices:
            idx = rng.permutation(idx)
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            proportions = np.where(sizes < fair_share, proportions, 0.0)
            total = proportions.sum()
            if total <= 0:  # every client is full: spread this class evenly instead
                proportions = np.full(num_clients, 1.0 / num_clients)
            else:
                proportions = proportions / total
            cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(np.int64)
            for client, part in enumerate(np.split(idx, cuts)):
                shards[client].append(part)
                sizes[client] += len(part)
        smallest = int(sizes.min())
        if smallest >= min_size:
            return [np.sort(np.concatenate(parts)).astype(np.int64) for parts in shards]
    raise ValueError(
        f"dirichlet partition (alpha={alpha:g}) of {n} samples across {num_clients} clients "
        f"left a client with fewer than {min_size} samples in {max_retries} tries "
        f"(smallest shard in the last try: {smallest}); use a larger alpha or fewer clients"
    )


def partition_indices(
    labels: np.ndarray, num_clients: int, partition: str | PartitionSpec, seed: int, **kwargs: int
) -> list[np.ndarray]:
    """Partition by a partition string; ``kwargs`` (min_size, max_retries) go to dirichlet."""
    spec = partition if isinstance(partition, PartitionSpec) else parse_partition(partition)
    labels = np.asarray(labels).reshape(-1)
    if spec.kind == "iid":
        return iid_partition(labels.shape[0], num_clients, seed)
    assert spec.alpha is not None
    return dirichlet_partition(labels, num_clients, spec.alpha, seed, **kwargs)
