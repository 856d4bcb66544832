"""Trainers in plain numpy: for tests, demos and benchmarks, no ML framework needed."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from fl_kubeflow.client.trainer import EvaluateResult, FitResult
from fl_kubeflow.wire import Weights


def random_weights(shapes: Sequence[Sequence[int]], seed: int, dtype: str = "float32") -> Weights:
    """Deterministic weights named t000, t001, ... with the given shapes."""
    rng = np.random.default_rng(seed)
    return {
        f"t{i:03d}": rng.standard_normal(tuple(shape)).astype(dtype)
        for i, shape in enumerate(shapes)
    }


class DeltaTrainer:
    """Returns the global weights plus a constant: makes FedAvg's result exact to check.

    Args:
        shapes: Tensor shapes of the model.
        delta: Added to every weight in every round.
        num_examples: Reported example count (FedAvg's weight).
        seed: Seed of the initial weights; clients with one seed propose the same model.
        fit_delay: Seconds to sleep in ``fit``, to play a slow client.
        slow_rounds: If given, sleep only in these rounds.
        eval_delay: Seconds to sleep in ``evaluate``, to play a client slow to say goodbye.
        evaluate_rounds: If True, report the mean weight as a metric after every round.
    """

    def __init__(
        self,
        shapes: Sequence[Sequence[int]] = ((16, 8), (8,)),
        delta: float = 0.0,
        num_examples: int = 1,
        seed: int = 0,
        fit_delay: float = 0.0,
        evaluate_rounds: bool = False,
        dtype: str = "float32",
        slow_rounds: Sequence[int] | None = None,
        eval_delay: float = 0.0,
    ) -> None:
        self.eval_delay = eval_delay
        self.shapes = [tuple(s) for s in shapes]
        self.delta = delta
        self.num_examples = num_examples
        self.seed = seed
        self.fit_delay = fit_delay
        self.slow_rounds = set(slow_rounds) if slow_rounds else None
        self.evaluate_rounds = evaluate_rounds
        self.dtype = dtype

    def initial_weights(self) -> Weights:
        return random_weights(self.shapes, self.seed, self.dtype)

    def fit(self, weights: Weights, server_round: int, config: dict[str, Any]) -> FitResult:
        if self.fit_delay and (self.slow_rounds is None or server_round in self.slow_rounds):
            time.sleep(self.fit_delay)
        updated = {name: (value + value.dtype.type(self.delta)) for name, value in weights.items()}
        return FitResult(updated, self.num_examples, {"delta": self.delta})

    def evaluate(self, weights: Weights, server_round: int) -> EvaluateResult | None:
        if not self.evaluate_rounds:
            return None
        if self.eval_delay:
            time.sleep(self.eval_delay)
        total = sum(float(v.sum()) for v in weights.values())
        count = sum(v.size for v in weights.values())
        return EvaluateResult(self.num_examples, {"mean_weight": total / count})


class LinearRegressionTrainer:
    """Least-squares regression by gradient descent on a client's own synthetic data.

    Every client draws features from its own distribution (shifted by client id) but
    shares the true coefficients, so federated averaging learns them while no
    client's data leaves it. A real, if small, learning problem for demos.
    """

    def __init__(
        self,
        client_id: int,
        num_features: int = 10,
        num_samples: int = 200,
        learning_rate: float = 0.05,
        local_epochs: int = 5,
        seed: int = 0,
    ) -> None:
        truth_rng = np.random.default_rng(seed)
        self.true_w = truth_rng.standard_normal(num_features)
        rng = np.random.default_rng([seed, client_id + 1])
        x = rng.standard_normal((num_samples, num_features)) + 0.5 * client_id
        y = x @ self.true_w + 0.1 * rng.standard_normal(num_samples)
        split = int(num_samples * 0.8)
        self.x_train, self.y_train = x[:split], y[:split]
        self.x_test, self.y_test = x[split:], y[split:]
        self.num_features = num_features
        self.learning_rate = learning_rate
        self.local_epochs = local_epochs
        self.seed = seed

    def initial_weights(self) -> Weights:
        rng = np.random.default_rng(self.seed + 1)
        return {
            "bias": np.zeros(1, dtype=np.float32),
            "coef": (0.01 * rng.standard_normal(self.num_features)).astype(np.float32),
        }

    def _mse(self, weights: Weights, x: np.ndarray, y: np.ndarray) -> float:
        pred = x @ weights["coef"].astype(np.float64) + float(weights["bias"][0])
        return float(np.mean((pred - y) ** 2))

    def fit(self, weights: Weights, server_round: int, config: dict[str, Any]) -> FitResult:
        coef = weights["coef"].astype(np.float64)
        bias = float(weights["bias"][0])
        n = len(self.y_train)
        for _ in range(self.local_epochs):
            err = self.x_train @ coef + bias - self.y_train
            # Normalised step: client features have different scales (shifted means).
            scale = self.learning_rate / (1.0 + float(np.mean(self.x_train**2)))
            coef -= scale * 2.0 * (self.x_train.T @ err) / n
            bias -= scale * 2.0 * float(err.mean())
        new = {
            "bias": np.array([bias], dtype=np.float32),
            "coef": coef.astype(np.float32),
        }
        loss = self._mse(new, self.x_train, self.y_train)
        return FitResult(new, n * self.local_epochs, {"loss": loss})

    def evaluate(self, weights: Weights, server_round: int) -> EvaluateResult | None:
        return EvaluateResult(
            len(self.y_test), {"loss": self._mse(weights, self.x_test, self.y_test)}
        )
