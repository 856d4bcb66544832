"""The user example's own steps under KFP's executor, on a model from a real local run.

``fl-kubeflow local`` (2 clients, 2 rounds, digits) writes the folder a ``trained_model``
artifact holds; the example's data step and evaluation step then run as the launcher
runs them (``tests/kfp_executor``: the component's command, an ExecutorInput). The data
step's held-out set is the union of the clients' local test splits, so the evaluation
step's accuracy must be the run's final federated evaluation of the same model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.examples import load_example
from tests.kfp_executor import run_executor

EXECUTOR_TIMEOUT = 300.0  # TensorFlow's import alone takes seconds on a loaded machine
LOCAL_RUN_TIMEOUT = 600.0


@pytest.mark.slow
def test_data_and_evaluation_steps_on_a_real_trained_model(tmp_path: Path) -> None:
    run = tmp_path / "run"
    local = [sys.executable, "-m", "fl_kubeflow", "local", "--clients", "2", "--rounds", "2"]
    subprocess.run(
        [*local, "--dataset", "digits", "--output", str(run)],
        check=True,
        capture_output=True,
        timeout=LOCAL_RUN_TIMEOUT,
    )
    data_step, evaluation_step = load_example("user_pipeline").build_steps("unused-here")

    data = run_executor(
        data_step,
        {"num_clients": 2, "partition": "iid", "seed": 0},
        tmp_path / "data",
        timeout=EXECUTOR_TIMEOUT,
    )
    assert data.proc.returncode == 0, data.log()
    with np.load(data.artifacts["test_set"]) as test_set:
        x, y = test_set["x"], test_set["y"]
    assert x.shape[1:] == (8, 8, 1) and len(x) == len(y) > 0

    evaluation = run_executor(
        evaluation_step,
        {},
        tmp_path / "evaluate",
        input_artifacts={"trained_model": run, "test_set": data.artifacts["test_set"]},
        timeout=EXECUTOR_TIMEOUT,
    )
    assert evaluation.proc.returncode == 0, evaluation.log()
    accuracy = evaluation.output_parameter()
    final = json.loads((run / "history.json").read_text())["rounds"][-1]["evaluate"]
    assert final["num_examples"] == len(y), final
    assert abs(accuracy - final["metrics"]["accuracy"]) < 0.01, (accuracy, final)
    metrics = json.loads(evaluation.executor_output.read_text())["artifacts"]["metrics"]
    assert metrics["artifacts"][0]["metadata"] == {"accuracy": accuracy, "examples": len(y)}
