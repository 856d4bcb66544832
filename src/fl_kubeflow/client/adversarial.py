"""A Byzantine client for robustness experiments: wraps any trainer and corrupts its updates.

Attacks (``scale`` is their strength):

* ``noise``: the global model plus Gaussian garbage of standard deviation ``scale``
  (the trained result is discarded): a broken or hostile client.
* ``scale``: the global model plus ``scale`` times the honest change (model
  replacement / boosting, Bagdasaryan et al. 2020).
* ``sign-flip``: the global model minus ``scale`` times the honest change.

The reported example count and metrics stay honest, and evaluation is honest, so
the run's federated accuracy measures the damage to the global model only.

``python -m fl_kubeflow.cli.adversarial_cmd`` runs it as a client process.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fl_kubeflow.client.trainer import EvaluateResult, FitResult, Trainer
from fl_kubeflow.wire import Weights

log = logging.getLogger("fl_kubeflow.client")

ATTACKS = ("noise", "scale", "sign-flip")


def corrupt(
    trained: Weights, global_weights: Weights, attack: str, scale: float, rng: np.random.Generator
) -> Weights:
    """The update a Byzantine client sends instead of ``trained`` (dtypes kept)."""
    out: Weights = {}
    for name, g in global_weights.items():
        g64 = g.astype(np.float64)
        if attack == "noise":
            value = g64 + scale * rng.standard_normal(g.shape)
        elif attack == "scale":
            value = g64 + scale * (trained[name].astype(np.float64) - g64)
        elif attack == "sign-flip":
            value = g64 - scale * (trained[name].astype(np.float64) - g64)
        else:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
        out[name] = value.astype(g.dtype) if np.issubdtype(g.dtype, np.floating) else g.copy()
    return out


class AdversarialTrainer:
    """Wraps ``trainer``; every fit result is replaced by ``corrupt``'s."""

    def __init__(self, trainer: Trainer, attack: str = "noise", scale: float = 10.0, seed: int = 0):
        if attack not in ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
        self.trainer = trainer
        self.attack = attack
        self.scale = float(scale)
        self.rng = np.random.default_rng([seed, 0xBAD])

    def initial_weights(self) -> Weights:
        return self.trainer.initial_weights()

    def fit(self, weights: Weights, server_round: int, config: dict[str, Any]) -> FitResult:
        result = self.trainer.fit(weights, server_round, config)
        bad = corrupt(result.weights, weights, self.attack, self.scale, self.rng)
        log.warning(
            "round %d: sending a %s update (scale %g)", server_round, self.attack, self.scale
        )
        return FitResult(bad, result.num_examples, result.metrics)

    def evaluate(self, weights: Weights, server_round: int) -> EvaluateResult | None:
        return self.trainer.evaluate(weights, server_round)
