"""FedAvg (McMahan et al. 2017): the example-weighted mean of client weights."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fl_kubeflow.strategies.base import RoundAggregator, Strategy
from fl_kubeflow.wire import Weights


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast a float64 aggregate back to the clients' dtype (integers are rounded, not cut)."""
    if np.issubdtype(dtype, np.integer):
        values = np.rint(values)
    return values.astype(dtype, copy=False)


def weighted_average(updates: Iterable[tuple[Weights, int]]) -> Weights:
    """Reference FedAvg: sum(n_i * w_i) / sum(n_i), accumulated in float64."""
    acc = WeightedSum()
    for weights, num_examples in updates:
        acc.add(weights, num_examples)
    return acc.result()


class WeightedSum(RoundAggregator):
    """Running float64 sum of n_i * w_i: memory is one model, whatever the client count."""

    def __init__(self) -> None:
        super().__init__()
        self._sums: dict[str, np.ndarray] = {}
        self._dtypes: dict[str, np.dtype] = {}
        self._scratch: dict[str, np.ndarray] = {}

    def _add(self, weights: Weights, num_examples: int, client_id: str | None = None) -> None:
        scale = float(num_examples)
        for name, value in weights.items():
            acc = self._sums.get(name)
            if acc is None:
                self._dtypes[name] = value.dtype
                self._sums[name] = np.multiply(value, scale, dtype=np.float64)
                continue
            scratch = self._scratch.get(name)
            if scratch is None:
                scratch = self._scratch[name] = np.empty_like(acc)
            np.multiply(value, scale, out=scratch, dtype=np.float64)
            np.add(acc, scratch, out=acc)

    def result(self) -> Weights:
        total = float(self.total_examples)
        self._scratch.clear()
        out: Weights = {}
        for name, acc in self._sums.items():
            np.divide(acc, total, out=acc)
            out[name] = cast_like(acc, self._dtypes[name])
        return out


def is_float(array: np.ndarray) -> bool:
    """Server optimizers and DP move floating tensors only; integer ones are averaged as-is."""
    return bool(np.issubdtype(array.dtype, np.floating))


class FedAvg(Strategy):
    """Example-weighted averaging, streamed."""

    name = "fedavg"
    averaging = True

    def start_round(self, server_round: int, global_weights: Weights) -> RoundAggregator:
        return WeightedSum()
