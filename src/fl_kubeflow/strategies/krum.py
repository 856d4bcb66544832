"""Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent").

With ``n`` updates of which at most ``f`` are Byzantine, each update's score is
the sum of squared Euclidean distances (over all tensors) to its ``n - f - 2``
nearest other updates. Krum returns the update with the lowest score;
Multi-Krum averages the ``m`` lowest-scoring ones (unweighted, as in the paper).
The guarantee needs ``n > 2f + 2``; ``check`` enforces it for the smallest round
the quorum allows. Ties go to the update that arrived first.

Scores need all pairwise distances: the aggregator buffers the round (n models)
and computes n(n-1)/2 distances when it closes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fl_kubeflow.checks import check_int
from fl_kubeflow.strategies.base import RoundAggregator, Strategy
from fl_kubeflow.strategies.robust import BufferedAggregator, stacked
from fl_kubeflow.tensors import cast_like
from fl_kubeflow.wire import Weights


def pairwise_sq_distances(updates: Sequence[Weights]) -> np.ndarray:
    """n x n matrix of squared Euclidean distances between whole updates (all tensors)."""
    n = len(updates)
    dist = np.zeros((n, n), dtype=np.float64)
    for name in updates[0]:
        flat = stacked(updates, name).reshape(n, -1)
        for i in range(n):
            # Differences, not the |a|^2 + |b|^2 - 2ab expansion: close updates lose no digits.
            diff = flat[i + 1 :] - flat[i]
            d = np.einsum("ij,ij->i", diff, diff)
            dist[i, i + 1 :] += d
            dist[i + 1 :, i] += d
    return dist


def krum_scores(distances: np.ndarray, num_malicious: int) -> np.ndarray:
    """Each update's sum of squared distances to its n - f - 2 nearest others."""
    n = len(distances)
    k = n - num_malicious - 2
    if k < 1:
        raise ValueError(
            f"krum needs more than 2*num_malicious + 2 = {2 * num_malicious + 2} updates, got {n}"
        )
    scores = np.empty(n)
    for i in range(n):
        others = np.delete(distances[i], i)
        scores[i] = np.sort(others)[:k].sum()
    return scores


def krum_select(scores: np.ndarray, num_selected: int) -> list[int]:
    """Indices of the ``num_selected`` lowest scores, best first; ties by index."""
    return [int(i) for i in np.argsort(scores, kind="stable")[:num_selected]]


def mean_of(updates: Sequence[Weights]) -> Weights:
    """Unweighted coordinate mean, in float64, cast back to the updates' dtypes."""
    first = updates[0]
    return {
        name: cast_like(stacked(updates, name).mean(axis=0), first[name].dtype) for name in first
    }


class Krum(Strategy):
    """Krum: the single update closest to its neighbours (robust, buffers the round).

    Args:
        num_malicious: f, the number of Byzantine clients to tolerate.
    """

    name = "krum"
    streaming = False

    def __init__(self, *, num_malicious: int = 0, **common: Any) -> None:
        super().__init__(**common)
        self.num_malicious = check_int("num_malicious", num_malicious, minimum=0)

    def _num_selected(self, num_updates: int) -> int:
        return 1

    def options(self) -> dict[str, Any]:
        return {**super().options(), "num_malicious": self.num_malicious}

    def check(self, num_clients: int, min_clients: int) -> None:
        super().check(num_clients, min_clients)
        needed = 2 * self.num_malicious + 3
        if min_clients < needed:
            raise ValueError(
                f"{self.name} with option num_malicious={self.num_malicious} needs every round to "
                f"have at least 2*num_malicious + 3 = {needed} updates, but rounds may close with "
                f"min_clients={min_clients}; raise min_clients or lower num_malicious"
            )

    def start_round(self, server_round: int, global_weights: Weights) -> RoundAggregator:
        return self._track(server_round, BufferedAggregator(self._aggregate))

    def _aggregate(self, agg: BufferedAggregator) -> Weights:
        scores = krum_scores(pairwise_sq_distances(agg.updates), self.num_malicious)
        chosen = krum_select(scores, self._num_selected(len(agg.updates)))
        names = agg.names(range(len(scores)))
        agg.report.update(
            {
                "rule": self.name,
                "updates": len(agg.updates),
                "selected": agg.names(chosen),
                "scores": {str(k): float(s) for k, s in zip(names, scores, strict=True)},
            }
        )
        if len(chosen) == 1:
            return dict(agg.updates[chosen[0]])
        return mean_of([agg.updates[i] for i in chosen])


class MultiKrum(Krum):
    """Multi-Krum: the mean of the ``num_selected`` best-scoring updates.

    Args:
        num_malicious: f, the number of Byzantine clients to tolerate.
        num_selected: m, how many updates to average; default n - f of each round.
    """

    name = "multikrum"

    def __init__(self, *, num_selected: int | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.num_selected = (
            None if num_selected is None else check_int("num_selected", num_selected, minimum=1)
        )

    def _num_selected(self, num_updates: int) -> int:
        if self.num_selected is None:
            return num_updates - self.num_malicious
        return min(self.num_selected, num_updates - self.num_malicious)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "num_selected": self.num_selected}

    def check(self, num_clients: int, min_clients: int) -> None:
        super().check(num_clients, min_clients)
        if self.num_selected is not None and self.num_selected > min_clients - self.num_malicious:
            raise ValueError(
                f"multikrum option num_selected={self.num_selected} exceeds min_clients - "
                f"num_malicious = {min_clients - self.num_malicious}: a round of min_clients "
                "updates could not supply that many non-Byzantine ones"
            )
