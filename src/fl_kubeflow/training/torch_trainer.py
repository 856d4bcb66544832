"""``TorchTrainer``: the ``Trainer`` protocol for a PyTorch model on this client's data.

``--trainer torch`` builds it: the same built-in models (``mlp``, ``cnn``) and datasets
as the Keras trainer, or a user's ``torch.nn.Module`` factory (``--model MODULE:FACTORY``,
see ``torch_models``). With ``torch_models`` this is the only module of the package that
imports torch; the server never does.

Weights on the wire are the model's ``state_dict``: its keys (``fc1.weight``...) name
the tensors, floating-point ones travel as float32 and integer buffers (a BatchNorm's
``num_batches_tracked``) as they are. So the run's ``weights.safetensors`` loads back
with ``model.load_state_dict(safetensors.torch.load_file(path))``.

Training mirrors ``KerasTrainer`` so that the two compare: sparse cross-entropy on
logits, SGD with momentum or Adam, fresh optimizer state every round (FedAvg's
ClientUpdate starts from the global weights with no carried-over state), per-round
shuffles seeded by ``(seed, client_id, round)`` (a restarted round replays
identically), ``num_examples = len(x_train) * local_epochs``, and the last epoch's
loss and accuracy (batch-size-weighted means over the epoch) as metrics. FedProx:
a round config with ``proximal_mu > 0`` adds ``proximal_mu / 2 * ||w - w_global||^2``
over the trainable parameters to the loss (Li et al. 2020) and reports the term.

Threads: one per client unless ``OMP_NUM_THREADS`` is set (see ``THREADS_ENV``).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, replace
from typing import Any

import numpy as np

try:
    import torch
except ImportError as exc:  # the factory's error then says what to install
    raise ImportError(
        f"the torch trainer needs PyTorch ({exc}): pip install 'fl-kubeflow[torch]', or use an "
        "image built with it (docs/pytorch.md)"
    ) from exc
import torch.nn.functional as F
from torch import nn

from fl_kubeflow.client.trainer import EvaluateResult, FitResult
from fl_kubeflow.training.common import check_weights, proximal_mu
from fl_kubeflow.training.datasets import ClientData, load_trainer_data
from fl_kubeflow.training.options import TrainerOptions
from fl_kubeflow.training.torch_models import build_torch_model, torch_input_shape
from fl_kubeflow.wire import Weights

# PyTorch's own knob for its intra-op threads. Unset, every client trains on one thread:
# the built-in models and batches are too small to gain from more, and clients often share
# cores (a local run's N processes, pods packed on a node), where OpenMP threads that spin
# waiting for a busy core made a round 10-20x slower (measured: 0.3 s vs 6-9 s a fit).
THREADS_ENV = "OMP_NUM_THREADS"
_EVAL_BATCH_SIZE = 256  # evaluation has no gradient noise to care about: batch for speed


def channels_first(x: np.ndarray) -> np.ndarray:
    """Image batches ``(n, height, width, channels)`` as ``(n, channels, height, width)``."""
    if x.ndim == 4:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x


def make_optimizer(model: nn.Module, options: TrainerOptions) -> torch.optim.Optimizer:
    """A fresh optimizer named by ``options`` over the model's parameters."""
    if options.optimizer.lower() == "adam":
        return torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    return torch.optim.SGD(model.parameters(), lr=options.learning_rate, momentum=options.momentum)


def state_weights(model: nn.Module) -> Weights:
    """The model's ``state_dict`` as named numpy copies (floating point as float32)."""
    weights: Weights = {}
    for name, tensor in model.state_dict().items():
        value = tensor.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        weights[name] = value.numpy().copy()
    return weights


def load_weights(model: nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Copy named weights into ``model`` after checking every name and shape.

    Raises:
        ValueError: missing or unexpected names, or a shape mismatch, naming them.
            Nothing is copied unless everything matches.
    """
    state = model.state_dict()
    check_weights({name: tuple(tensor.shape) for name, tensor in state.items()}, weights)
    arrays = {}
    for name in state:
        array = np.asarray(weights[name])
        # torch.from_numpy shares memory and warns on read-only arrays: copy those.
        arrays[name] = array if array.flags.writeable else array.copy()
    with torch.no_grad():
        for name, tensor in state.items():
            tensor.copy_(torch.from_numpy(arrays[name]))


class TorchTrainer:
    """A PyTorch model and this client's data, driven by the federated client.

    Construction loads the data, builds the model and runs two training samples
    through it, so a misconfigured client (a model that does not take the data's
    samples, or has the wrong number of outputs) fails before its first round.

    Args:
        options: what to build (``options.model``: ``mlp``, ``cnn`` or ``MODULE:FACTORY``).
        data: preloaded client data (tests, baselines); loaded from ``options`` if None.

    Raises:
        ValueError: bad options, an unusable model, or a model/data mismatch naming both.
        DatasetError: the dataset cannot be loaded.
    """

    def __init__(self, options: TrainerOptions, data: ClientData | None = None) -> None:
        options.validate()
        if THREADS_ENV not in os.environ:
            torch.set_num_threads(1)
        self.options = options
        self._use_data(data if data is not None else load_trainer_data(options))
        self.input_shape = torch_input_shape(self.data.input_shape)
        self.model = build_torch_model(
            options.model, self.input_shape, self.data.num_classes, options.seed
        )
        self._check_outputs()
        self._initial = state_weights(self.model)
        # Built once: torch.optim's first optimizer imports torch._dynamo (seconds), which
        # is better paid here, before the client joins, than in round 1. Each fit clears
        # its state instead (see fit).
        self.optimizer = make_optimizer(self.model, options)

    def _use_data(self, data: ClientData) -> None:
        self.data = data
        self.x_train = torch.from_numpy(channels_first(data.x_train))
        self.y_train = torch.from_numpy(data.y_train.astype(np.int64))
        self.x_test = torch.from_numpy(channels_first(data.x_test))
        self.y_test = torch.from_numpy(data.y_test.astype(np.int64))

    def switch_client(self, client_id: int, data: ClientData) -> None:
        """Become client ``client_id`` with ``data``, keeping the one model and optimizer.

        For a process hosting many virtual clients (``fl-kubeflow simulate``): each fit
        then is exactly that client's (its data, its seeded shuffles) without building
        a model per client. The data must fit the model as the first did.
        """
        self.options = replace(self.options, client_id=client_id)
        self._use_data(data)

    def _check_outputs(self) -> None:
        """Raise a ValueError naming the model and the data if one cannot train on the other."""
        names = f"model {self.options.model!r}", f"dataset {self.options.dataset!r}"
        sample = self.x_train[:2]
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.model(sample)
        except Exception as exc:  # shape errors surface as RuntimeError, user code as anything
            raise ValueError(
                f"{names[0]} cannot take {names[1]}'s samples of shape {self.input_shape} "
                f"(channels first): {type(exc).__name__}: {exc}"
            ) from exc
        classes = self.data.num_classes
        units = out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() == 2 else None
        exact = not self.data.num_classes_inferred
        if units is None or (units != classes if exact else units < classes):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"{names[0]} outputs {shape} for a batch of {len(sample)} but {names[1]} has "
                f"{classes} classes: a model must return logits of shape (batch, {classes})"
            )

    @property
    def num_parameters(self) -> int:
        """Scalar count over all tensors sent on the wire."""
        return int(sum(t.numel() for t in self.model.state_dict().values()))

    def describe(self) -> dict[str, Any]:
        """Options, data and model size, for logs."""
        return {
            **asdict(self.options),
            "data": self.data.description,
            "parameters": self.num_parameters,
        }

    def initial_weights(self) -> Weights:
        """The weights the model was built with (seeded)."""
        return {name: array.copy() for name, array in self._initial.items()}

    def fit(self, weights: Weights, server_round: int, config: dict[str, Any]) -> FitResult:
        """Train ``local_epochs`` epochs from the global ``weights``.

        Returns:
            The new weights, ``num_examples = len(x_train) * local_epochs`` and the last
            epoch's loss and accuracy (plus ``proximal_term`` under FedProx).

        Raises:
            FloatingPointError: training diverged (non-finite loss).
            ValueError: weights that do not match the model, or a bad ``proximal_mu``.
        """
        mu = proximal_mu(config)
        load_weights(self.model, weights)
        options = self.options
        optimizer = self.optimizer
        optimizer.state.clear()  # no momentum or Adam moments carried over from a past round
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        anchors = [p.detach().clone() for p in trainable] if mu > 0 else []
        # Our own seeded shuffles, and a seeded torch RNG for any dropout in a user's
        # model: the same round replays identically on a restart.
        rng = np.random.default_rng([options.seed, options.client_id, server_round])
        torch.manual_seed(int(rng.integers(2**62)))
        x, y = self.x_train, self.y_train
        self.model.train()
        metrics: dict[str, float] = {}
        for _ in range(options.local_epochs):
            order = torch.from_numpy(rng.permutation(len(x)))
            loss_sum = correct = prox = 0.0
            for start in range(0, len(x), options.batch_size):
                batch = order[start : start + options.batch_size]
                xb, yb = x[batch], y[batch]
                logits = self.model(xb)
                loss = F.cross_entropy(logits, yb)
                total = loss
                if mu > 0:
                    term = sum(
                        torch.sum((p - a) ** 2) for p, a in zip(trainable, anchors, strict=True)
                    )
                    total = loss + 0.5 * mu * term
                    prox = 0.5 * mu * float(term.detach())
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * len(batch)
                correct += float((logits.argmax(dim=1) == yb).sum())
            metrics = {"loss": loss_sum / max(1, len(x)), "accuracy": correct / max(1, len(x))}
            if mu > 0:
                # mu/2 * ||w - w_global||^2 before the epoch's last step: the term's size.
                metrics["proximal_term"] = prox
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(
                f"client {options.client_id}: training diverged in round {server_round} "
                f"(loss {metrics['loss']}); lower the learning rate (now {options.learning_rate})"
            )
        return FitResult(
            weights=state_weights(self.model),
            num_examples=len(x) * options.local_epochs,
            metrics=metrics,
        )

    def evaluate(self, weights: Weights, server_round: int) -> EvaluateResult | None:
        """Loss and accuracy of ``weights`` on the local test split; None without test data."""
        if len(self.x_test) == 0:
            return None
        load_weights(self.model, weights)
        self.model.eval()
        loss_sum = correct = 0.0
        batch_size = max(self.options.batch_size, _EVAL_BATCH_SIZE)
        with torch.no_grad():
            for start in range(0, len(self.x_test), batch_size):
                xb = self.x_test[start : start + batch_size]
                yb = self.y_test[start : start + batch_size]
                logits = self.model(xb)
                loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
                correct += float((logits.argmax(dim=1) == yb).sum())
        n = len(self.x_test)
        return EvaluateResult(
            num_examples=n, metrics={"loss": loss_sum / n, "accuracy": correct / n}
        )
