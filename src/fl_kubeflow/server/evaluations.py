"""Clients' evaluations of each round's global model, weighted by their examples."""

from __future__ import annotations

from typing import Any

from fl_kubeflow.metrics import Metrics, WeightedMetrics


class Evaluations:
    """Per round (0 = the initial model), the weighted metrics and who reported them.

    No lock: the Federation calls it under its own.
    """

    def __init__(self) -> None:
        self.metrics: dict[int, WeightedMetrics] = {}
        self.seen: dict[int, set[str]] = {}

    def add(self, server_round: int, client_id: str, num_examples: int, metrics: Metrics) -> bool:
        """Fold one client's evaluation in; False if it sent this round's before."""
        seen = self.seen.setdefault(server_round, set())
        if client_id in seen:
            return False
        seen.add(client_id)
        self.metrics.setdefault(server_round, WeightedMetrics()).add(metrics, num_examples)
        return True

    def to_state(self) -> dict[str, Any]:
        """JSON-able state, for checkpoints."""
        return {
            str(number): {"metrics": agg.to_state(), "seen": sorted(self.seen[number])}
            for number, agg in self.metrics.items()
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Evaluations:
        restored = cls()
        for number, saved in state.items():
            restored.metrics[int(number)] = WeightedMetrics.from_state(saved["metrics"])
            restored.seen[int(number)] = set(saved["seen"])
        return restored
