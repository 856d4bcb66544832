"""What a client's machine-learning code provides: the ``Trainer`` protocol.

The client library owns the protocol and the retries; a trainer owns the model
and the data. Weights cross this boundary as ``dict[str, numpy.ndarray]`` (see
``fl_kubeflow.wire``), so the same client drives Keras, numpy or anything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from fl_kubeflow.wire import Weights


@dataclass
class FitResult:
    """Locally trained weights, how many samples were trained on, and training metrics."""

    weights: Weights
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class EvaluateResult:
    """How many test samples were evaluated, and their metrics (e.g. loss, accuracy)."""

    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Trainer(Protocol):
    """A client's model and data."""

    def initial_weights(self) -> Weights:
        """Freshly initialised weights: proposed to the server if it has no initial model."""
        ...

    def fit(self, weights: Weights, server_round: int, config: dict[str, Any]) -> FitResult:
        """Train from the global ``weights`` for ``server_round`` and return the result."""
        ...

    def evaluate(self, weights: Weights, server_round: int) -> EvaluateResult | None:
        """Evaluate the global model after ``server_round`` (0 = initial); None to skip."""
        ...
