"""The Strategy interface: how one round's client updates become the next global model.

Modelled on Flower's strategies: the server calls ``configure_fit`` when it opens a
round, feeds every accepted update to the round's ``RoundAggregator`` as it arrives,
and asks ``finish_round`` for the new global model once the round closes. Rules
that can fold updates in one at a time (the FedAvg family) keep the server's memory
independent of the number of clients; robust rules (median, Krum) must buffer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from fl_kubeflow.wire import Weights


class RoundAggregator(ABC):
    """Collects one round's updates."""

    def __init__(self) -> None:
        self.count = 0
        self.total_examples = 0

    def add(self, weights: Weights, num_examples: int) -> None:
        """Fold in one validated update (names, shapes and dtypes already match)."""
        self._add(weights, num_examples)
        self.count += 1
        self.total_examples += num_examples

    @abstractmethod
    def _add(self, weights: Weights, num_examples: int) -> None: ...

    @abstractmethod
    def result(self) -> Weights:
        """The aggregate of everything added; called once, with count >= 1."""


class Strategy(ABC):
    """One aggregation rule. Subclasses register themselves under ``name``."""

    name: ClassVar[str]
    streaming: ClassVar[bool] = True

    def configure_fit(self, server_round: int) -> dict[str, Any]:
        """Per-round instructions sent to clients with the global model."""
        return {}

    @abstractmethod
    def start_round(self, server_round: int, global_weights: Weights) -> RoundAggregator:
        """A fresh aggregator for ``server_round``, whose clients start from ``global_weights``."""

    def finish_round(
        self, server_round: int, global_weights: Weights, aggregate: Weights
    ) -> Weights:
        """The next global model; server-side optimizers override this."""
        return aggregate

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint between rounds (e.g. server momentum)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        del state  # stateless by default
