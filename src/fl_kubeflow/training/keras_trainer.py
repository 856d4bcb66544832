"""``KerasTrainer``: the ``Trainer`` protocol for a Keras model on this client's data.

This is the only module of the package that imports TensorFlow/Keras at import time,
so the server, the CLI's start-up path and non-training tests never pay for it.

Optimizer state: the model is compiled once (no retracing per round), and at the
start of every ``fit`` the optimizer's variables (iteration count, momentum or Adam
moments) are restored to their freshly built values. Each round is then a fresh
local optimisation from the global weights, as in FedAvg's ClientUpdate; carried
over momentum would point along a previous global model's gradients, and would
differ between clients that skipped rounds. (Flower's Keras examples keep one
compiled optimizer across rounds; with plain SGD both are the same.)
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

# Before TensorFlow loads: hide its C++ INFO/WARNING start-up lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from fl_kubeflow import defaults
from fl_kubeflow.client.trainer import EvaluateResult, FitResult
from fl_kubeflow.training.datasets import ClientData, load_client_data
from fl_kubeflow.training.models import (
    build_model,
    check_compatible,
    get_weights,
    outputs_probabilities,
    set_weights,
)
from fl_kubeflow.wire import Weights

keras.utils.disable_interactive_logging()  # no progress bars in pod logs

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam")
_EVAL_BATCH_SIZE = 256  # evaluation has no gradient noise to care about: batch for speed


@dataclass
class TrainerOptions:
    """Everything a client needs to build its model and data.

    ``optimizer`` is ``sgd`` (with ``momentum``; 0 for plain SGD) or ``adam``.
    ``seed`` fixes the partition, the local split, the initial weights and the
    per-round shuffles; all clients of a federation must share ``seed``,
    ``dataset``, ``partition``, ``num_clients`` and ``model``.
    """

    dataset: str = defaults.DATASET
    partition: str = defaults.PARTITION
    model: str = defaults.MODEL
    client_id: int = 0
    num_clients: int = 1
    local_epochs: int = defaults.LOCAL_EPOCHS
    batch_size: int = defaults.BATCH_SIZE
    learning_rate: float = defaults.LEARNING_RATE
    optimizer: str = defaults.OPTIMIZER
    momentum: float = 0.9
    seed: int = defaults.SEED
    test_fraction: float = 0.2

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        if self.local_epochs < 1:
            raise ValueError(f"local_epochs must be >= 1, got {self.local_epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


def make_optimizer(options: TrainerOptions) -> keras.optimizers.Optimizer:
    """The optimizer named by ``options``."""
    if options.optimizer.lower() == "adam":
        return keras.optimizers.Adam(learning_rate=options.learning_rate)
    return keras.optimizers.SGD(learning_rate=options.learning_rate, momentum=options.momentum)


def compile_model(model: keras.Model, options: TrainerOptions) -> None:
    """Compile with sparse cross-entropy (logits or probabilities, as the model ends)."""
    model.compile(
        optimizer=make_optimizer(options),
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=not outputs_probabilities(model)
        ),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        # XLA compilation costs seconds up front and buys little for these models on CPU.
        jit_compile=False,
    )


class KerasTrainer:
    """A Keras model and this client's data, driven by the federated client.

    Construction loads the data, builds (or loads) the model and checks that they
    fit together, so a misconfigured client fails before its first round.

    Args:
        options: what to build.
        data: preloaded client data (tests, baselines); loaded from ``options`` if None.

    Raises:
        ValueError: bad options, or a model/data mismatch naming both shapes.
        DatasetError: the dataset cannot be loaded.
    """

    def __init__(self, options: TrainerOptions, data: ClientData | None = None) -> None:
        options.validate()
        self.options = options
        self.data = data if data is not None else self._load(options)
        self.model = build_model(
            options.model, self.data.input_shape, self.data.num_classes, options.seed
        )
        check_compatible(
            self.model,
            self.data.input_shape,
            self.data.num_classes,
            exact_classes=not self.data.num_classes_inferred,
            model_name=f"model {options.model!r}",
            data_name=f"dataset {options.dataset!r}",
        )
        compile_model(self.model, options)
        optimizer = self.model.optimizer
        optimizer.build(self.model.trainable_variables)
        self._fresh_optimizer_state = [np.array(v.numpy()) for v in optimizer.variables]
        self._initial = get_weights(self.model)
        self._warned_keys: set[str] = set()

    @staticmethod
    def _load(options: TrainerOptions) -> ClientData:
        return load_client_data(
            options.dataset,
            options.client_id,
            options.num_clients,
            partition=options.partition,
            seed=options.seed,
            test_fraction=options.test_fraction,
        )

    @property
    def num_parameters(self) -> int:
        """Scalar count over all weights sent on the wire."""
        return int(sum(np.prod(v.shape) for v in self.model.weights))

    def describe(self) -> dict[str, Any]:
        """Options, data and model size, for logs."""
        return {
            **asdict(self.options),
            "data": self.data.description,
            "parameters": self.num_parameters,
        }

    def initial_weights(self) -> Weights:
        """The weights the model was built with (seeded, or from the ``.keras`` file)."""
        return {name: array.copy() for name, array in self._initial.items()}

    def _reset_optimizer(self) -> None:
        for variable, value in zip(
            self.model.optimizer.variables, self._fresh_optimizer_state, strict=True
        ):
            variable.assign(value)

    def fit(self, weights: Weights, server_round: int, config: dict[str, Any]) -> FitResult:
        """Train ``local_epochs`` epochs from the global ``weights``.

        Returns:
            The new weights, ``num_examples = len(x_train) * local_epochs`` (every
            sample of every epoch, partial batches included) and the last epoch's
            loss and accuracy.

        Raises:
            FloatingPointError: training diverged (non-finite loss).
        """
        self._note_ignored(config)
        set_weights(self.model, weights)
        self._reset_optimizer()
        x, y = self.data.x_train, self.data.y_train
        # Our own seeded shuffles: the same round replays identically on a restart.
        rng = np.random.default_rng([self.options.seed, self.options.client_id, server_round])
        metrics: dict[str, float] = {}
        for _ in range(self.options.local_epochs):
            order = rng.permutation(len(x))
            history = self.model.fit(
                x[order],
                y[order],
                batch_size=self.options.batch_size,
                epochs=1,
                shuffle=False,
                verbose=0,
            )
            metrics = {key: float(values[-1]) for key, values in history.history.items()}
        if not math.isfinite(metrics.get("loss", math.nan)):
            raise FloatingPointError(
                f"client {self.options.client_id}: training diverged in round {server_round} "
                f"(loss {metrics.get('loss')}); lower the learning rate "
                f"(now {self.options.learning_rate})"
            )
        return FitResult(
            weights=get_weights(self.model),
            num_examples=len(x) * self.options.local_epochs,
            metrics={"loss": metrics["loss"], "accuracy": metrics["accuracy"]},
        )

    def evaluate(self, weights: Weights, server_round: int) -> EvaluateResult | None:
        """Loss and accuracy of ``weights`` on the local test split; None without test data."""
        if len(self.data.x_test) == 0:
            return None
        set_weights(self.model, weights)
        result = self.model.evaluate(
            self.data.x_test,
            self.data.y_test,
            batch_size=max(self.options.batch_size, _EVAL_BATCH_SIZE),
            verbose=0,
            return_dict=True,
        )
        return EvaluateResult(
            num_examples=len(self.data.x_test),
            metrics={"loss": float(result["loss"]), "accuracy": float(result["accuracy"])},
        )

    def _note_ignored(self, config: dict[str, Any]) -> None:
        """Warn once about config keys that would change training but are not implemented."""
        mu = config.get("proximal_mu")
        if mu and "proximal_mu" not in self._warned_keys:
            self._warned_keys.add("proximal_mu")
            log.warning("proximal_mu=%s ignored: KerasTrainer does not implement FedProx", mu)
