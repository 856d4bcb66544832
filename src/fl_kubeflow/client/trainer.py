"""What a client's machine-learning code provides: the ``Trainer`` protocol (public API).

Import it as ``from fl_kubeflow.client import Trainer, FitResult, EvaluateResult``.
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
    """What one round of local training gives back to the federation.

    Attributes:
        weights: The locally trained weights, with exactly the names, shapes and dtypes
            of the global weights ``fit`` was given (the server refuses anything else).
        num_examples: How many samples the round trained on; FedAvg weights this
            client's update by it (KerasTrainer: training samples x local epochs).
        metrics: Training metrics of the round, e.g. ``{"loss": ..., "accuracy": ...}``;
            numbers only. They land in the run's history and report.
    """

    weights: Weights
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class EvaluateResult:
    """How a global model did on this client's local test data.

    Attributes:
        num_examples: How many test samples were evaluated; the server averages the
            clients' metrics weighted by it (the run's federated evaluation).
        metrics: Evaluation metrics, e.g. ``{"loss": ..., "accuracy": ...}``; numbers only.
    """

    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Trainer(Protocol):
    """A client's model and data: what your own training code implements.

    Any object with these three methods is a Trainer (no base class needed); the
    federated client calls them and owns everything else (joining, fetching the global
    model, sending updates, retries). Weights are ``dict[str, numpy.ndarray]``: stable
    names (every client must name the same tensor the same way), fixed shapes and
    dtypes. The calls come from one thread, one at a time. docs/trainers.md has the
    whole contract and examples.
    """

    def initial_weights(self) -> Weights:
        """Freshly initialised weights of the model.

        Called before the first round: the server's model is checked against these
        names, shapes and dtypes, and a server that has no initial model yet takes
        the first client's as the starting point (seed them the same in every client).
        """
        ...

    def fit(self, weights: Weights, server_round: int, config: dict[str, Any]) -> FitResult:
        """Train from the global ``weights`` for round ``server_round`` (1, 2, ...).

        ``config`` is the round's configuration from the server's strategy (e.g.
        ``proximal_mu`` for FedProx; unknown keys may be ignored). Raise to stop this
        client: the error ends the client with its message.
        """
        ...

    def evaluate(self, weights: Weights, server_round: int) -> EvaluateResult | None:
        """Evaluate the global model after ``server_round`` (0 = initial) on local test data.

        Return None to skip (e.g. a client without test data).
        """
        ...
