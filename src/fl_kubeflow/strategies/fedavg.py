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
    """Running float64 sum of n_i * w_i: memory is one model, whatever the client count.

    Each update is folded in slices of ``CHUNK`` elements through a small float64
    scratch buffer that stays in the CPU cache, so memory traffic is the update read
    once plus the sum read and written once: no model-sized temporary.
    """

    CHUNK = 1 << 15  # float64 elements: 256 KiB of scratch

    def __init__(self) -> None:
        super().__init__()
        self._sums: dict[str, np.ndarray] = {}
        self._dtypes: dict[str, np.dtype] = {}
        self._scratch = np.empty(self.CHUNK, dtype=np.float64)

    def _add(self, weights: Weights, num_examples: int, client_id: str | None = None) -> None:
        scale = float(num_examples)
        for name, value in weights.items():
            acc = self._sums.get(name)
            if acc is None:
                self._dtypes[name] = value.dtype
                self._sums[name] = np.multiply(value, scale, dtype=np.float64)
                continue
            flat_acc, flat = acc.reshape(-1), np.asarray(value).reshape(-1)
            for lo in range(0, flat.size, self.CHUNK):
                hi = min(lo + self.CHUNK, flat.size)
                scratch = self._scratch[: hi - lo]
                np.multiply(flat[lo:hi], scale, out=scratch, dtype=np.float64)
                np.add(flat_acc[lo:hi], scratch, out=flat_acc[lo:hi])

    def result(self) -> Weights:
        total = float(self.total_examples)
        out: Weights = {}
        # Each sum is dropped once cast: the float64 model is not held next to the result.
        sums, self._sums = self._sums, {}
        for name in list(sums):
            acc = sums.pop(name)
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
