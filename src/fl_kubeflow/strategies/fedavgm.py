"""FedAvgM (Hsu et al. 2019, "Measuring the Effects of Non-Identical Data
Distribution"): FedAvg's mean taken as a pseudo-gradient step with server momentum.

With ``g_t = x_t - mean_i(x_i)`` (the negative of the average client change)::

    v_t     = momentum * v_{t-1} + g_t        (v_0 = 0)
    x_{t+1} = x_t - server_learning_rate * v_t

``momentum=0, server_learning_rate=1`` is exactly FedAvg. Flower's FedAvgM is the
same rule. Aggregation streams (a running weighted sum); the server keeps one
extra model-sized buffer, the momentum.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fl_kubeflow.checks import check_float
from fl_kubeflow.strategies.fedavg import FedAvg
from fl_kubeflow.tensors import cast_like, is_float
from fl_kubeflow.wire import Weights


def momentum_step(
    global_weights: Weights,
    aggregate: Weights,
    velocity: dict[str, np.ndarray],
    server_learning_rate: float,
    momentum: float,
) -> tuple[Weights, dict[str, np.ndarray]]:
    """One FedAvgM server step: (next global model, next velocity). Inputs are not modified."""
    new_global: Weights = {}
    new_velocity: dict[str, np.ndarray] = {}
    for name, x in global_weights.items():
        if not is_float(x):
            new_global[name] = aggregate[name]
            continue
        x64 = x.astype(np.float64)
        grad = x64 - aggregate[name].astype(np.float64)
        previous = velocity.get(name)
        v = grad if previous is None else momentum * previous + grad
        new_velocity[name] = v
        new_global[name] = cast_like(x64 - server_learning_rate * v, x.dtype)
    return new_global, new_velocity


class FedAvgM(FedAvg):
    """FedAvg with server momentum.

    Args:
        server_learning_rate: Server step size (eta); 1.0 applies the average change whole.
        momentum: Server momentum (beta) in [0, 1).
    """

    name = "fedavgm"

    def __init__(
        self, *, server_learning_rate: float = 1.0, momentum: float = 0.9, **common: Any
    ) -> None:
        super().__init__(**common)
        self.server_learning_rate = check_float(
            "server_learning_rate", server_learning_rate, minimum=0.0, min_inclusive=False
        )
        self.momentum = check_float(
            "momentum", momentum, minimum=0.0, maximum=1.0, max_inclusive=False
        )
        self._velocity: dict[str, np.ndarray] = {}

    def options(self) -> dict[str, Any]:
        return {
            **super().options(),
            "server_learning_rate": self.server_learning_rate,
            "momentum": self.momentum,
        }

    def finish_round(
        self, server_round: int, global_weights: Weights, aggregate: Weights
    ) -> Weights:
        new_global, self._velocity = momentum_step(
            global_weights, aggregate, self._velocity, self.server_learning_rate, self.momentum
        )
        return new_global

    def state_dict(self) -> dict[str, Any]:
        return {"velocity": dict(self._velocity)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._velocity = {
            k: np.asarray(v, np.float64) for k, v in state.get("velocity", {}).items()
        }
