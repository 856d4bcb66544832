"""Coordinate-wise robust aggregation: FedMedian and FedTrimmedAvg.

Yin et al. 2018 ("Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates") analyse both. Each coordinate of the new model is the median,
or the mean after dropping the ``int(beta * n)`` largest and smallest values, of
that coordinate over the round's ``n`` updates. As in Flower, clients count
equally (``num_examples`` is not a weight: a client could inflate it to dominate).

Neither rule can be computed one update at a time: the aggregator buffers every
update of the round (memory: n models) and works when the round closes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from fl_kubeflow.checks import check_float
from fl_kubeflow.strategies.base import RoundAggregator, Strategy
from fl_kubeflow.tensors import cast_like
from fl_kubeflow.wire import Weights

log = logging.getLogger("fl_kubeflow.strategies")


def stacked(updates: Sequence[Weights], name: str) -> np.ndarray:
    """Tensor ``name`` of every update, stacked on a new first axis, in float64."""
    return np.stack([np.asarray(u[name], dtype=np.float64) for u in updates])


def coordinate_median(updates: Sequence[Weights]) -> Weights:
    """Per coordinate, the median over updates (mean of the middle two for an even count)."""
    if not updates:
        raise ValueError("the median of no updates is undefined")
    first = updates[0]
    return {
        name: cast_like(np.median(stacked(updates, name), axis=0), first[name].dtype)
        for name in first
    }


def trim_count(num_updates: int, beta: float) -> int:
    """How many values ``beta`` drops at each end of ``num_updates`` (Flower's int(beta * n))."""
    return int(beta * num_updates)


def trimmed_mean(updates: Sequence[Weights], beta: float) -> Weights:
    """Per coordinate, the mean after dropping the trim_count(n, beta) lowest and highest values.

    Raises:
        ValueError: the trim would drop every update.
    """
    n = len(updates)
    cut = trim_count(n, beta)
    if n - 2 * cut < 1:
        raise ValueError(f"beta={beta:g} trims all {n} updates ({cut} from each end)")
    first = updates[0]
    out: Weights = {}
    for name in first:
        values = np.sort(stacked(updates, name), axis=0)
        out[name] = cast_like(values[cut : n - cut].mean(axis=0), first[name].dtype)
    return out


class BufferedAggregator(RoundAggregator):
    """Keeps every update of the round, then applies ``rule`` to all of them at once."""

    def __init__(self, rule: Any) -> None:
        super().__init__()
        self.rule = rule
        self.updates: list[Weights] = []
        self.examples: list[int] = []
        self.client_ids: list[str | None] = []

    def _add(self, weights: Weights, num_examples: int, client_id: str | None) -> None:
        self.updates.append(weights)
        self.examples.append(num_examples)
        self.client_ids.append(client_id)

    def result(self) -> Weights:
        try:
            return self.rule(self)
        finally:
            self.updates = []  # the round is done: free n models now, not at the next round

    def names(self, indices: Sequence[int]) -> list[str | int]:
        """Client ids of ``indices`` where the server passed them, else arrival positions."""
        return [self.client_ids[i] if self.client_ids[i] is not None else i for i in indices]


class FedMedian(Strategy):
    """Coordinate-wise median of the round's updates (robust, buffers the round)."""

    name = "fedmedian"
    streaming = False

    def start_round(self, server_round: int, global_weights: Weights) -> RoundAggregator:
        return self._track(server_round, BufferedAggregator(self._aggregate))

    @staticmethod
    def _aggregate(agg: BufferedAggregator) -> Weights:
        agg.report.update({"rule": "median", "updates": len(agg.updates)})
        return coordinate_median(agg.updates)


class FedTrimmedAvg(Strategy):
    """Coordinate-wise trimmed mean (robust, buffers the round).

    Args:
        beta: Fraction trimmed from each end, in [0, 0.5]; ``trim_fraction`` is an alias.
            With n updates, int(beta * n) values are dropped at each end of every
            coordinate. 0.5 keeps only the median of an odd count; ``check`` refuses
            it when a round could close with an even count (nothing would remain).
    """

    name = "fedtrimmedavg"
    streaming = False

    def __init__(
        self, *, beta: float | None = None, trim_fraction: float | None = None, **common: Any
    ) -> None:
        super().__init__(**common)
        if beta is not None and trim_fraction is not None:
            raise ValueError("give option beta or its alias trim_fraction, not both")
        option, value = ("trim_fraction", trim_fraction) if beta is None else ("beta", beta)
        if value is None:
            value = 0.2
        self.beta = check_float(option, value, minimum=0.0, maximum=0.5)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "beta": self.beta}

    def check(self, num_clients: int, min_clients: int) -> None:
        super().check(num_clients, min_clients)
        for n in range(min_clients, num_clients + 1):
            cut = trim_count(n, self.beta)
            if n - 2 * cut < 1:
                raise ValueError(
                    f"option beta={self.beta:g} trims every update of a round that closes with "
                    f"{n} clients ({cut} from each end); use beta < 0.5"
                )
        if trim_count(min_clients, self.beta) == 0:
            log.warning(
                "fedtrimmedavg: beta=%g trims nothing from a round of %d clients: "
                "that round is a plain mean, not robust",
                self.beta,
                min_clients,
            )

    def start_round(self, server_round: int, global_weights: Weights) -> RoundAggregator:
        return self._track(server_round, BufferedAggregator(self._aggregate))

    def _aggregate(self, agg: BufferedAggregator) -> Weights:
        cut = trim_count(len(agg.updates), self.beta)
        agg.report.update({"rule": "trimmed_mean", "updates": len(agg.updates), "trimmed": cut})
        return trimmed_mean(agg.updates, self.beta)
