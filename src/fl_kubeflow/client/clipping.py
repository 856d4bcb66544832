"""Client-side clipping: a trained model's change is bounded before it leaves the client.

With ``clipping=client`` the server puts ``dp_clipping_norm`` into each round's
config. ``clip_for_config`` applies it to a fit result; ``ClippingTrainer`` wraps
any ``Trainer`` so that every fit does. The server clips again regardless
(``strategies.dp_fixed_clipping``), so a client that skips this only loses the
benefit of never sending an unclipped update.
"""

from __future__ import annotations

from typing import Any

from fl_kubeflow.checks import check_float
from fl_kubeflow.client.trainer import EvaluateResult, FitResult, Trainer
from fl_kubeflow.privacy.clipping import CLIENT_CLIPPING_KEY, clip_weights
from fl_kubeflow.wire import Weights


def clip_for_config(
    trained: Weights, global_weights: Weights, config: dict[str, Any]
) -> tuple[Weights, dict[str, float]]:
    """Clip ``trained`` to the round's ``dp_clipping_norm`` if the config asks for it.

    Returns the weights to send and metrics to report (the norm before clipping).
    """
    if config.get(CLIENT_CLIPPING_KEY) is None:
        return trained, {}
    norm_bound = check_float(
        CLIENT_CLIPPING_KEY, config[CLIENT_CLIPPING_KEY], minimum=0.0, min_inclusive=False
    )
    clipped, norm = clip_weights(trained, global_weights, norm_bound)
    return clipped, {"update_norm": norm, "clipped": float(norm > norm_bound)}


class ClippingTrainer:
    """Wraps a trainer so that each fit result is clipped as the round's config asks."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def initial_weights(self) -> Weights:
        return self.trainer.initial_weights()

    def fit(self, weights: Weights, server_round: int, config: dict[str, Any]) -> FitResult:
        result = self.trainer.fit(weights, server_round, config)
        clipped, extra = clip_for_config(result.weights, weights, config)
        return FitResult(clipped, result.num_examples, {**result.metrics, **extra})

    def evaluate(self, weights: Weights, server_round: int) -> EvaluateResult | None:
        return self.trainer.evaluate(weights, server_round)
