"""Aggregation strategies, selectable by name."""

from __future__ import annotations

from typing import Any

from fl_kubeflow.strategies.base import RoundAggregator, Strategy
from fl_kubeflow.strategies.fedavg import FedAvg, weighted_average

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (FedAvg,)}


def create(name: str, **options: Any) -> Strategy:
    """Build the strategy called ``name``; unknown names raise ValueError listing the known ones."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; choose one of: {', '.join(sorted(STRATEGIES))}"
        ) from None
    return cls(**options)


__all__ = ["STRATEGIES", "FedAvg", "RoundAggregator", "Strategy", "create", "weighted_average"]
