"""A worker's one model, switched between clients, trains exactly as each client's own
trainer would (simulation/population.py): the same weights bit for bit, the same metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fl_kubeflow.simulation.options import SimulationOptions
from fl_kubeflow.simulation.population import BuiltinPopulation
from fl_kubeflow.training.options import TrainerOptions


def _options(trainer: str) -> SimulationOptions:
    return SimulationOptions(
        clients=40,
        trainer=trainer,
        dataset="digits",
        model="mlp",
        local_epochs=2,
        batch_size=10,
        learning_rate=0.1,
        seed=3,
        output=Path("unused"),
    )


def _own_trainer(trainer: str, client: int) -> object:
    """What ``fl-kubeflow client --client-id CLIENT`` builds: its own data and model."""
    options = TrainerOptions(
        dataset="digits",
        model="mlp",
        client_id=client,
        num_clients=40,
        local_epochs=2,
        batch_size=10,
        learning_rate=0.1,
        seed=3,
    )
    if trainer == "keras":
        from fl_kubeflow.training.keras_trainer import KerasTrainer

        return KerasTrainer(options)
    from fl_kubeflow.training.torch_trainer import TorchTrainer

    return TorchTrainer(options)


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["keras", "torch"])
def test_switched_clients_fit_as_their_own_trainers(trainer: str) -> None:
    pytest.importorskip(trainer)
    population = BuiltinPopulation(_options(trainer), [1, 5, 9])
    start = population.initial_weights()
    for client in (5, 1, 9):  # out of order: each switch must bring the client's own data
        shared = population.fit(client, start, 4, {})
        alone = _own_trainer(trainer, client).fit(start, 4, {})  # type: ignore[attr-defined]
        assert shared.num_examples == alone.num_examples
        for name, value in alone.weights.items():
            np.testing.assert_array_equal(shared.weights[name], value, err_msg=name)
        for key, value in alone.metrics.items():
            assert shared.metrics[key] == pytest.approx(value, rel=1e-6), key
        evaluated = population.evaluate(client, shared.weights, 4)
        expected = _own_trainer(trainer, client).evaluate(alone.weights, 4)  # type: ignore[attr-defined]
        assert evaluated is not None and expected is not None
        assert evaluated.num_examples == expected.num_examples
        for key, value in expected.metrics.items():
            assert evaluated.metrics[key] == pytest.approx(value, rel=1e-6), key
