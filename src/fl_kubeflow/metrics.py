"""Example-weighted averages of the small metric dicts clients report."""

from __future__ import annotations

import math
from collections.abc import Mapping

Metrics = dict[str, float]


class WeightedMetrics:
    """Streaming example-weighted mean of numeric metrics, one key at a time.

    Keys a client does not report do not dilute the others: each key keeps its own
    total weight.
    """

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._weights: dict[str, float] = {}
        self.num_clients = 0
        self.num_examples = 0

    def add(self, metrics: Mapping[str, float], num_examples: int) -> None:
        self.num_clients += 1
        self.num_examples += num_examples
        for key, value in metrics.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value) * num_examples
            self._weights[key] = self._weights.get(key, 0.0) + num_examples

    def to_state(self) -> dict:
        """JSON-able state, for checkpoints."""
        return {
            "sums": self._sums,
            "weights": self._weights,
            "num_clients": self.num_clients,
            "num_examples": self.num_examples,
        }

    @classmethod
    def from_state(cls, state: dict) -> WeightedMetrics:
        restored = cls()
        restored._sums = {k: float(v) for k, v in state["sums"].items()}
        restored._weights = {k: float(v) for k, v in state["weights"].items()}
        restored.num_clients = int(state["num_clients"])
        restored.num_examples = int(state["num_examples"])
        return restored

    def mean(self) -> Metrics:
        return {k: self._sums[k] / self._weights[k] for k in sorted(self._sums) if self._weights[k]}


def validate(metrics: object, *, max_keys: int = 64, max_key_length: int = 64) -> Metrics:
    """Check a client's metric dict (string keys, finite numbers); ValueError names the fault."""
    if not isinstance(metrics, dict):
        raise ValueError(f"metrics must be a JSON object, got {type(metrics).__name__}")
    if len(metrics) > max_keys:
        raise ValueError(f"metrics has {len(metrics)} keys; at most {max_keys} are allowed")
    clean: Metrics = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key or len(key) > max_key_length:
            raise ValueError(f"metric name {key!r} must be a string of 1 to {max_key_length} chars")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"metric {key!r} must be a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"metric {key!r} is not finite: {value}")
        clean[key] = float(value)
    return clean
