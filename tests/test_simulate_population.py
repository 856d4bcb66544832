"""A worker's one model, switched between clients, trains exactly as each client's own
trainer would (simulation/population.py): the same weights bit for bit, the same metrics."""

from __future__ import annotations

import subprocess
import sys
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
    population = BuiltinPopulation(_options(trainer), [1, 5])
    start = population.initial_weights()
    for client in (5, 1):  # each switch must bring the client's own data
        # As a worker calls it: evaluate the global model, then train from it.
        before = population.evaluate(client, start, 3)
        assert before is not None
        own = _own_trainer(trainer, client).evaluate(start, 3)  # type: ignore[attr-defined]
        assert before.metrics == pytest.approx(own.metrics, rel=1e-6)
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


def test_a_numpy_worker_loads_no_server_code_and_no_framework() -> None:
    """A worker is client code: nothing of the server, and numpy clients need no framework
    (memory per worker is what a simulation is measured by)."""
    listing = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, fl_kubeflow.simulation.worker; print('\\n'.join(sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    forbidden = ("fl_kubeflow.server", "fl_kubeflow.strategies", "flask", "waitress")
    frameworks = ("tensorflow", "keras", "torch")
    loaded = [m for m in listing if m.split(".")[0] in frameworks or m.startswith(forbidden)]
    assert not loaded, loaded


@pytest.mark.slow
def test_a_keras_worker_keeps_kerass_optional_imports_out() -> None:
    """pandas, scikit-learn, SciPy and matplotlib, which importing Keras pulls in, stay
    out of a worker's process (about 160 MB of its memory) and it still trains; the
    same population in a shared process (a test, a notebook) leaves them importable."""
    pytest.importorskip("keras")
    code = """
import sys
from pathlib import Path
from fl_kubeflow.simulation.options import SimulationOptions
from fl_kubeflow.simulation.population import KERAS_EXTRAS, make_population
options = SimulationOptions(clients=40, trainer="keras", dataset="digits", model="mlp",
                            local_epochs=1, batch_size=10, seed=3, output=Path("unused"))
population = make_population(options, [0, 1], skip_extras=sys.argv[1] == "worker")
result = population.fit(1, population.initial_weights(), 1, {})
assert result.num_examples > 0
print(sorted(m for m in KERAS_EXTRAS if sys.modules.get(m) is not None))
"""
    loaded = {}
    for mode in ("worker", "shared"):
        done = subprocess.run(
            [sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]
        loaded[mode] = done.stdout.split("\n")[-2]
    assert loaded["worker"] == "[]"
    assert "sklearn" in loaded["shared"], loaded  # what Keras imports when let
