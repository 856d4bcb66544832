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

FedProx: when the round's config carries ``proximal_mu > 0`` the local objective
is ``loss(w) + proximal_mu / 2 * ||w - w_global||^2`` over the trainable weights
(Li et al. 2020). Keras' ``fit`` has no hook for a term that depends on the
round's global weights, so such rounds run a small custom training loop (one
``tf.function`` step: forward, loss, proximal term, gradient, optimizer update)
over the same seeded batches ``fit`` would see. ``proximal_mu == 0`` keeps
``model.fit`` itself.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

# Before TensorFlow loads: hide its C++ INFO/WARNING start-up lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from fl_kubeflow.client.trainer import EvaluateResult, FitResult
from fl_kubeflow.training.common import proximal_mu
from fl_kubeflow.training.datasets import ClientData, load_trainer_data
from fl_kubeflow.training.models import (
    build_model,
    check_compatible,
    get_weights,
    outputs_probabilities,
    set_weights,
)
from fl_kubeflow.training.options import TrainerOptions
from fl_kubeflow.wire import Weights

keras.utils.disable_interactive_logging()  # no progress bars in pod logs

log = logging.getLogger(__name__)

_EVAL_BATCH_SIZE = 256  # evaluation has no gradient noise to care about: batch for speed


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


ModelBuilder = Callable[[tuple[int, ...], int], keras.Model]


class KerasTrainer:
    """A Keras model and this client's data, driven by the federated client.

    Construction loads the data, builds (or loads) the model and checks that they
    fit together, so a misconfigured client fails before its first round.

    Args:
        options: what to build.
        data: preloaded client data (tests, baselines); loaded from ``options`` if None.
        model: your own model instead of ``options.model``: called once as
            ``model(input_shape, num_classes)`` (one sample's shape, e.g. ``(8, 8, 1)``)
            after ``keras.utils.set_random_seed(options.seed)``. A compiled model keeps
            its optimizer, loss and metrics (then ``options``' optimizer and learning
            rate are unused); an uncompiled one is compiled as the built-ins are. Give
            its layers fixed names: the weights travel by name.
        batch_steps: train and evaluate batch by batch on the compiled model's own step
            (``train_on_batch``/``test_on_batch``) instead of ``model.fit``/``evaluate``:
            the same batches, optimizer updates and epoch metrics (batch-size-weighted
            means) without the ~1 s each ``fit`` call costs in setting up its data
            pipeline, which dominates a shard of a few dozen samples. For processes that
            fit many small clients (``fl-kubeflow simulate``).

    Raises:
        ValueError: bad options, or a model/data mismatch naming both shapes.
        DatasetError: the dataset cannot be loaded.
    """

    def __init__(
        self,
        options: TrainerOptions,
        data: ClientData | None = None,
        model: ModelBuilder | None = None,
        *,
        batch_steps: bool = False,
    ) -> None:
        options.validate()
        self.options = options
        self.batch_steps = batch_steps
        self.data = data if data is not None else load_trainer_data(options)
        if model is None:
            self.model = build_model(
                options.model, self.data.input_shape, self.data.num_classes, options.seed
            )
            model_name = f"model {options.model!r}"
        else:
            keras.utils.set_random_seed(options.seed)
            self.model = model(tuple(self.data.input_shape), self.data.num_classes)
            model_name = f"model {getattr(model, '__name__', type(model).__name__)}()"
            if not isinstance(self.model, keras.Model):
                raise ValueError(
                    f"{model_name} returned a {type(self.model).__name__}, not a keras.Model"
                )
        check_compatible(
            self.model,
            self.data.input_shape,
            self.data.num_classes,
            exact_classes=not self.data.num_classes_inferred,
            model_name=model_name,
            data_name=f"dataset {options.dataset!r}",
        )
        if not self.model.compiled:
            compile_model(self.model, options)
        optimizer = self.model.optimizer
        optimizer.build(self.model.trainable_variables)
        self._fresh_optimizer_state = [np.array(v.numpy()) for v in optimizer.variables]
        self._initial = get_weights(self.model)
        self._proximal: _ProximalLoop | None = None

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

    def switch_client(self, client_id: int, data: ClientData) -> None:
        """Become client ``client_id`` with ``data``, keeping the one compiled model.

        For a process hosting many virtual clients (``fl-kubeflow simulate``): each fit
        then is exactly that client's (its data, its seeded shuffles), without building
        or compiling a model per client. The data must fit the model as the first did.
        """
        self.options = replace(self.options, client_id=client_id)
        self.data = data

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
        mu = proximal_mu(config)
        set_weights(self.model, weights)
        self._reset_optimizer()
        x, y = self.data.x_train, self.data.y_train
        # Our own seeded shuffles: the same round replays identically on a restart.
        rng = np.random.default_rng([self.options.seed, self.options.client_id, server_round])
        metrics: dict[str, float] = {}
        if mu > 0 and self._proximal is None:
            self._proximal = _ProximalLoop(self.model)
        if mu > 0:
            assert self._proximal is not None
            self._proximal.start(mu)  # anchors = the global weights just set
        for _ in range(self.options.local_epochs):
            order = rng.permutation(len(x))
            if mu > 0:
                assert self._proximal is not None
                metrics = self._proximal.epoch(x[order], y[order], self.options.batch_size)
                continue
            if self.batch_steps:
                metrics = _by_batches(
                    self.model.train_on_batch, x[order], y[order], self.options.batch_size
                )
                continue
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
            # The loss and whatever the model was compiled with (built-ins: accuracy).
            metrics=metrics,
        )

    def evaluate(self, weights: Weights, server_round: int) -> EvaluateResult | None:
        """Loss and accuracy of ``weights`` on the local test split; None without test data."""
        if len(self.data.x_test) == 0:
            return None
        set_weights(self.model, weights)
        batch_size = max(self.options.batch_size, _EVAL_BATCH_SIZE)
        x, y = self.data.x_test, self.data.y_test
        if self.batch_steps:
            result = _by_batches(self.model.test_on_batch, x, y, batch_size)
        else:
            result = self.model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
        return EvaluateResult(
            num_examples=len(x),
            metrics={key: float(value) for key, value in result.items()},
        )


def _by_batches(
    step: Callable[..., dict[str, Any]], x: np.ndarray, y: np.ndarray, batch_size: int
) -> dict[str, float]:
    """``step`` (``train_on_batch`` or ``test_on_batch``) over (x, y) in order, in batches;
    the metrics as ``fit``/``evaluate`` report them: means weighted by batch size.

    Each step call starts its metrics afresh, so the epoch's means are made here.
    """
    sums: dict[str, float] = {}
    for start in range(0, len(x), batch_size):
        logs = step(x[start : start + batch_size], y[start : start + batch_size], return_dict=True)
        size = len(x[start : start + batch_size])
        for key, value in logs.items():
            sums[key] = sums.get(key, 0.0) + float(value) * size
    return {key: total / max(1, len(x)) for key, total in sums.items()}


class _ProximalLoop:
    """FedProx's local training: the compiled model's loss plus mu/2 * ||w - w_global||^2.

    One compiled step serves every round: the anchors (global weights) and mu are
    variables assigned at the start of each fit, so nothing retraces. The step is
    Keras' own ``train_step`` with one term added: forward pass in training mode,
    the compiled loss (mean over the batch) plus any layer losses, gradients of
    the total, the compiled optimizer's update. Loss and accuracy are reported as
    ``fit`` reports them (batch-size-weighted means over the epoch) and exclude the
    proximal term, which is reported separately, so they compare across strategies.
    """

    def __init__(self, model: keras.Model) -> None:
        import tensorflow as tf

        self.model = model
        self.variables = list(model.trainable_variables)
        self.anchors = [
            tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False) for v in self.variables
        ]
        self.mu = tf.Variable(0.0, dtype=tf.float32, trainable=False)
        loss_fn = model.loss
        if not isinstance(loss_fn, keras.losses.Loss):
            # A loss given by name or as a plain function is not reduced to one number.
            raise ValueError(
                f"FedProx needs the model compiled with a keras.losses.Loss object, "
                f"got loss={loss_fn!r}"
            )
        optimizer = model.optimizer

        def step(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            with tf.GradientTape() as tape:
                pred = model(x, training=True)
                data_loss = loss_fn(y, pred)
                if model.losses:
                    data_loss = data_loss + tf.add_n(model.losses)
                prox = tf.add_n(
                    [
                        tf.cast(tf.reduce_sum(tf.square(v - a)), tf.float32)
                        for v, a in zip(self.variables, self.anchors, strict=True)
                    ]
                )
                total = data_loss + 0.5 * self.mu * prox
            grads = tape.gradient(total, self.variables)
            optimizer.apply_gradients(zip(grads, self.variables, strict=True))
            correct = tf.reduce_sum(
                tf.cast(tf.equal(tf.argmax(pred, axis=-1), tf.cast(y, tf.int64)), tf.float32)
            )
            return data_loss, correct, prox

        input_shape = tuple(model.inputs[0].shape[1:])
        self._step = tf.function(
            step,
            input_signature=[
                tf.TensorSpec((None, *input_shape), tf.float32),
                tf.TensorSpec((None,), tf.int64),
            ],
            jit_compile=False,
        )

    def start(self, mu: float) -> None:
        """Anchor the proximal term at the model's current (global) weights."""
        self.mu.assign(mu)
        for anchor, variable in zip(self.anchors, self.variables, strict=True):
            anchor.assign(variable.value)

    def epoch(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> dict[str, float]:
        """One pass over (x, y) in order, in batches; returns the epoch's metrics."""
        loss_sum = correct = 0.0
        prox = 0.0
        for start in range(0, len(x), batch_size):
            xb = np.asarray(x[start : start + batch_size], np.float32)
            yb = np.asarray(y[start : start + batch_size], np.int64)
            batch_loss, batch_correct, batch_prox = self._step(xb, yb)
            loss_sum += float(batch_loss) * len(xb)
            correct += float(batch_correct)
            prox = float(batch_prox)
        n = max(1, len(x))
        return {
            "loss": loss_sum / n,
            "accuracy": correct / n,
            # ||w - w_global||^2 before the epoch's last step, times mu / 2: the term's size
            "proximal_term": 0.5 * float(self.mu.numpy()) * prox,
        }
