"""A straggler on purpose, for benchmarks and tests: a Trainer whose fits take FACTOR
times as long.

``SlowTrainer`` measures each fit of the trainer it wraps and then sleeps
``(FACTOR - 1)`` times that, so a client on a machine as fast as the others behaves
like one FACTOR times slower (benchmarks/stragglers.py). Evaluation is not slowed:
the straggler is slow to train, not to answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fl_kubeflow.checks import check_float
from fl_kubeflow.client.trainer import EvaluateResult, FitResult, Trainer
from fl_kubeflow.wire import Weights


class SlowTrainer:
    """Wraps a trainer so that each fit lasts ``factor`` times its measured time.

    Args:
        trainer: The trainer that does the work.
        factor: How many times slower each fit is (>= 1; 1 changes nothing).
        sleep: What waits (tests record the requested durations).
        clock: What measures the fit (seconds, monotonic).
    """

    def __init__(
        self,
        trainer: Trainer,
        factor: float,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.trainer = trainer
        self.factor = check_float("slowdown", factor, minimum=1.0)
        self._sleep = sleep
        self._clock = clock

    def initial_weights(self) -> Weights:
        return self.trainer.initial_weights()

    def fit(self, weights: Weights, server_round: int, config: dict[str, Any]) -> FitResult:
        started = self._clock()
        result = self.trainer.fit(weights, server_round, config)
        extra = (self.factor - 1.0) * (self._clock() - started)
        if extra > 0:
            self._sleep(extra)
        return result

    def evaluate(self, weights: Weights, server_round: int) -> EvaluateResult | None:
        return self.trainer.evaluate(weights, server_round)


def slow_down(trainer: Trainer, factor: float) -> Trainer:
    """``trainer`` itself for a factor of 1, else wrapped in a SlowTrainer."""
    return trainer if factor == 1.0 else SlowTrainer(trainer, factor)
