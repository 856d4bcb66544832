"""``fl-kubeflow local --trainer torch``: real server and PyTorch client processes on loopback.

Also runs examples/torch_client (a user's ``torch.nn.Module`` factory on PYTHONPATH), and
loads each run's ``weights.safetensors`` into a torch model as docs/pytorch.md says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fl_kubeflow.training.datasets import load_client_data

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from fl_kubeflow.training.torch_models import build_torch_model  # noqa: E402
from tests.fl_processes import run_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "torch_client"
CLIENTS = 3


def local(output: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600):
    options = ["--trainer", "torch", "--clients", str(CLIENTS), "--join-timeout", "300"]
    return run_cli("local", "--output", str(output), *options, *args, env=env, timeout=timeout)


def union_test_set() -> tuple[torch.Tensor, np.ndarray]:
    """Every client's local test split (the default seed and iid partition), channels first."""
    parts = [load_client_data("digits", i, CLIENTS) for i in range(CLIENTS)]
    x = np.concatenate([p.x_test for p in parts]).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x)), np.concatenate([p.y_test for p in parts])


def accuracy_of(model: torch.nn.Module, weights_file: Path) -> float:
    model.load_state_dict(load_file(weights_file))  # strict: every name and shape
    model.eval()
    x, y = union_test_set()
    with torch.no_grad():
        return float((model(x).argmax(1).numpy() == y).mean())


def final_accuracy(output: Path) -> float:
    history = json.loads((output / "history.json").read_text())
    assert history["status"] == "finished"
    return history["rounds"][-1]["evaluate"]["metrics"]["accuracy"]


def test_torch_mlp_reaches_090_on_digits_in_10_rounds(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = local(out, "--rounds", "10")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("weights.safetensors", "history.json", "report.html", "params.json"):
        assert (out / name).is_file(), name
    assert final_accuracy(out) >= 0.9, done.stdout
    # The same weights, loaded by a user into the built-in 2NN, classify the test splits.
    assert accuracy_of(build_torch_model("mlp", (1, 8, 8), 10), out / "weights.safetensors") >= 0.9


def test_example_user_model_trains_federated(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {"PYTHONPATH": os.pathsep.join([str(EXAMPLE), os.environ.get("PYTHONPATH", "")])}
    done = local(
        out, "--model", "digits_net:build", "--rounds", "3", "--local-epochs", "1", env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert final_accuracy(out) >= 0.8, done.stdout
    sys.path.insert(0, str(EXAMPLE))
    try:
        import digits_net
    finally:
        sys.path.remove(str(EXAMPLE))
    assert accuracy_of(digits_net.build((1, 8, 8), 10, 0), out / "weights.safetensors") >= 0.8


def test_unimportable_user_model_fails_before_contacting_the_server() -> None:
    # The client builds its trainer first: no server is needed to see the error.
    command = [sys.executable, "-m", "fl_kubeflow", "client", "--server", "http://127.0.0.1:9"]
    done = subprocess.run(
        [*command, "--trainer", "torch", "--model", "no_such_module_xyz:build"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "model 'no_such_module_xyz:build': cannot import module" in done.stderr, done.stderr
