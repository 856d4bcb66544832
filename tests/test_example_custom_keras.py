"""examples/custom_keras: a user's Keras model through ``fl-kubeflow local --trainer``.

The example package is put on the children's PYTHONPATH, as a user would, and its
factory trains its own model federated on digits; the final weights then load into
the user's model with the example's own ``load_trained``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fl_kubeflow_kfp.components import DEFAULT_IMAGE

from fl_kubeflow import wire

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "custom_keras"
FACTORY = "custom_digits.trainer:build"

# In a child process: keeps TensorFlow out of the pytest process.
EVALUATE = r"""
import json, sys
from custom_digits.trainer import load_trained
from fl_kubeflow.training.datasets import load_client_data
data = load_client_data("digits", 0, 1, test_fraction=0.2)
model = load_trained(sys.argv[1], data.input_shape, data.num_classes)
result = model.evaluate(data.x_test, data.y_test, verbose=0, return_dict=True)
print(json.dumps({"accuracy": float(result["accuracy"])}))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FL_KUBEFLOW_TOKEN"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLE), env.get("PYTHONPATH")]))
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


@pytest.mark.slow
def test_custom_keras_factory_learns_digits_in_ten_rounds(tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "fl_kubeflow", "local", "--output", str(out),
        "--clients", "2", "--rounds", "10", "--local-epochs", "1", "--trainer", FACTORY,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    history = json.loads((out / "history.json").read_text())
    assert history["status"] == "finished"
    final = history["rounds"][-1]
    assert final["round"] == 10 and final["contributors"] == ["0", "1"]
    accuracy = final["evaluate"]["metrics"]["accuracy"]
    assert accuracy >= 0.9, accuracy
    # The user's own model, not a built-in: the server wrote the weights only.
    assert not (out / "model.keras").exists()
    names = wire.decode((out / "weights.safetensors").read_bytes())
    assert any(name.endswith("conv/kernel") for name in names), sorted(names)

    loaded = subprocess.run(
        [sys.executable, "-c", EVALUATE, str(out / "weights.safetensors")],
        capture_output=True,
        text=True,
        timeout=180,
        env=_env(),
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert json.loads(loaded.stdout.strip().splitlines()[-1])["accuracy"] >= 0.9


def test_example_dockerfile_builds_on_the_project_image() -> None:
    text = (EXAMPLE / "Dockerfile").read_text()
    assert f"ARG FL_KUBEFLOW_IMAGE={DEFAULT_IMAGE}\n" in text
    assert "FROM ${FL_KUBEFLOW_IMAGE}" in text
    assert f"load_factory('{FACTORY}')" in text.replace("\\\n", "")
