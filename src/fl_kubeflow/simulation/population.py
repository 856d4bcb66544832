"""The virtual clients of one worker: one model object, each client's data swapped in per call.

A population answers the Trainer calls for any of its clients. The numpy one is
``DeltaTrainer`` with a per-client delta and example count, so the server's FedAvg
result is known exactly; the built-in one is one ``KerasTrainer`` or ``TorchTrainer``
(one framework runtime, one compiled model) that ``switch_client`` points at each
client's shard, which is cut from the dataset loaded once. Either way a fit is that
client's fit as ``fl-kubeflow local`` would run it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Protocol

from fl_kubeflow.client.numpy_trainers import DeltaTrainer
from fl_kubeflow.client.trainer import EvaluateResult, FitResult
from fl_kubeflow.simulation.options import NUMPY, SimulationOptions
from fl_kubeflow.wire import Weights

# What importing Keras also imports when it is installed, for features a worker never
# uses: pandas (DataFrame inputs), scikit-learn (its estimator wrappers), SciPy (sparse
# inputs, via scikit-learn and tf.keras), matplotlib (image galleries). Together about
# 160 MB of a worker's resident memory (691 -> 532 MB after importing TensorFlow,
# measured alone), a quarter of it. Keras and TensorFlow import each of them only
# optionally (``except ImportError``), and a worker's data are a built-in dataset,
# loaded before (simulate refuses tables).
KERAS_EXTRAS = ("pandas", "sklearn", "scipy", "matplotlib")


class Population(Protocol):
    """The Trainer calls, for whichever client is named; ``evaluates``: whether
    ``evaluate`` ever gives a result (the final model is fetched only if so)."""

    evaluates: bool

    def initial_weights(self) -> Weights: ...

    def fit(
        self, client: int, weights: Weights, server_round: int, config: dict[str, Any]
    ) -> FitResult: ...

    def evaluate(
        self, client: int, weights: Weights, server_round: int
    ) -> EvaluateResult | None: ...


def numpy_delta(client: int) -> float:
    """What numpy client ``client`` adds to every weight each round (tests check FedAvg by it)."""
    return 0.001 * (1 + client % 7)


def numpy_examples(client: int) -> int:
    """The example count numpy client ``client`` reports: FedAvg's weight."""
    return 1 + client % 5


class NumpyPopulation:
    """``DeltaTrainer`` clients of one ``params``-long float32 tensor; no evaluation.

    Args:
        params: Parameters of the model.
        seed: Seed of the initial weights.
    """

    evaluates = False

    def __init__(self, params: int, seed: int) -> None:
        self.shapes = ((params,),)
        self.seed = seed

    def _trainer(self, client: int) -> DeltaTrainer:
        return DeltaTrainer(
            self.shapes, numpy_delta(client), numpy_examples(client), seed=self.seed
        )

    def initial_weights(self) -> Weights:
        return self._trainer(0).initial_weights()

    def fit(
        self, client: int, weights: Weights, server_round: int, config: dict[str, Any]
    ) -> FitResult:
        return self._trainer(client).fit(weights, server_round, config)

    def evaluate(self, client: int, weights: Weights, server_round: int) -> EvaluateResult | None:
        return None


class BuiltinPopulation:
    """One Keras or PyTorch trainer serving every client of the worker.

    Args:
        options: The simulation.
        clients: The client ids this worker hosts.
        skip_extras: Keep Keras's optional imports out (``skip_keras_extras``): for a
            worker's own process only, as it changes what this process can import.
    """

    evaluates = True

    def __init__(
        self, options: SimulationOptions, clients: Sequence[int], skip_extras: bool = False
    ) -> None:
        from fl_kubeflow.training.datasets import client_splits, load_full_dataset, shard_data
        from fl_kubeflow.training.factory import load_factory
        from fl_kubeflow.training.options import TrainerOptions

        self.trainer_options = TrainerOptions(
            dataset=options.dataset,
            partition=options.partition,
            model=options.model,
            client_id=clients[0],
            num_clients=options.clients,
            local_epochs=options.local_epochs,
            batch_size=options.batch_size,
            learning_rate=options.learning_rate,
            optimizer=options.optimizer,
            seed=options.seed,
        )
        self.trainer_options.validate()
        full = load_full_dataset(options.dataset)
        splits = client_splits(
            full.y,
            options.clients,
            options.partition,
            options.seed,
            self.trainer_options.test_fraction,
        )
        # Shards are small (features as float32 of this worker's clients only): cut once.
        self.shards = {
            c: shard_data(full, splits[c], c, options.clients, options.partition) for c in clients
        }
        # The built-in trainers take their data ready-made: the dataset is loaded once.
        # Keras fits batch by batch: model.fit's set-up per call outweighs a small shard.
        fast = {"batch_steps": True} if options.trainer == "keras" else {}
        if skip_extras and options.trainer == "keras":
            skip_keras_extras()  # after the data are loaded: digits may need scikit-learn
        self.trainer: Any = load_factory(options.trainer)(
            self.trainer_options, data=self.shards[clients[0]], **fast
        )
        self._client = clients[0]
        # One fit and evaluation before the run: the framework builds its compiled step
        # functions (seconds) while the server starts, not in round 1.
        initial = self.trainer.initial_weights()
        self.trainer.evaluate(self.trainer.fit(initial, 0, {}).weights, 0)

    def _become(self, client: int) -> None:
        if client != self._client:
            self.trainer.switch_client(client, self.shards[client])
            self._client = client

    def initial_weights(self) -> Weights:
        return self.trainer.initial_weights()

    def fit(
        self, client: int, weights: Weights, server_round: int, config: dict[str, Any]
    ) -> FitResult:
        self._become(client)
        return self.trainer.fit(weights, server_round, config)

    def evaluate(self, client: int, weights: Weights, server_round: int) -> EvaluateResult | None:
        self._become(client)
        return self.trainer.evaluate(weights, server_round)


def skip_keras_extras() -> None:
    """Make Keras's optional imports of ``KERAS_EXTRAS`` fail in this process (a worker).

    A ``None`` in ``sys.modules`` makes ``import NAME`` raise ModuleNotFoundError; a
    module already imported is left as it is.
    """
    for name in KERAS_EXTRAS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def make_population(
    options: SimulationOptions, clients: Sequence[int], skip_extras: bool = False
) -> Population:
    """The population of ``options.trainer`` for ``clients`` (``skip_extras``: see
    ``BuiltinPopulation``)."""
    if options.trainer == NUMPY:
        return NumpyPopulation(options.params, options.seed)
    return BuiltinPopulation(options, clients, skip_extras)
