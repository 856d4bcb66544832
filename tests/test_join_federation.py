"""``fl_kubeflow.tasks.join_federation``: a user's own trainer in a real run, and its errors.

A real server process on loopback; the client runs in this process with a numpy
trainer (no framework), or inside a user's own KFP component run by KFP's executor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fl_kubeflow import wire
from fl_kubeflow.client import EvaluateResult, FitResult, ModelMismatch, Trainer
from fl_kubeflow.client.federated_client import FederatedClient
from fl_kubeflow.client.numpy_trainers import DeltaTrainer, random_weights
from fl_kubeflow.client.signature import mismatch
from fl_kubeflow.client.transport import ServerError
from fl_kubeflow.tasks import ClientTaskError, join_federation
from tests.fl_processes import start_server

SHAPES = [(4, 3), (3,)]
TIMEOUTS = {"retry_timeout": 30.0, "round_wait_timeout": 60.0}


def _server_with_model(tmp_path: Path, *args: str):
    """A one-client server whose initial model is random_weights(SHAPES, seed=0)."""
    initial = tmp_path / "initial.safetensors"
    initial.write_bytes(wire.encode(random_weights(SHAPES, seed=0)))
    return start_server(
        tmp_path / "server",
        "--clients",
        "1",
        "--initial-weights",
        str(initial),
        "--join-timeout",
        "60",
        "--round-timeout",
        "60",
        *args,
    )


def test_own_trainer_takes_part_in_a_run(tmp_path: Path) -> None:
    server = _server_with_model(tmp_path, "--rounds", "2")
    trainer = DeltaTrainer(shapes=SHAPES, delta=0.5, num_examples=4, evaluate_rounds=True)
    assert isinstance(trainer, Trainer)
    try:
        result = join_federation(
            trainer,
            run_id="own",
            client_id=0,
            server_address=f"127.0.0.1:{server.port}",
            summary_path=tmp_path / "summary.json",
            token_dir=tmp_path / "no-pod",
            **TIMEOUTS,
        )
    finally:
        code = server.wait()
    assert code == 0, server.log()
    assert result.summary["rounds_trained"] == [1, 2]
    assert result.metrics["rounds_trained"] == 2.0 and result.metrics["final_round"] == 2.0
    assert json.loads((tmp_path / "summary.json").read_text()) == result.summary
    for name, start in random_weights(SHAPES, seed=0).items():
        np.testing.assert_allclose(server.final_weights()[name], start + 1.0, atol=1e-6)


def test_mismatched_model_stops_the_client_before_training(tmp_path: Path) -> None:
    server = _server_with_model(tmp_path, "--rounds", "1")
    trainer = DeltaTrainer(shapes=[(4, 3), (5,)], delta=0.5)
    try:
        with pytest.raises(ClientTaskError) as failure:
            join_federation(
                trainer,
                run_id="own",
                client_id=0,
                server_address=server.url,
                token_dir=tmp_path / "no-pod",
                **TIMEOUTS,
            )
        assert server.status()["completed_rounds"] == 0
    finally:
        server.kill()
    message = str(failure.value)
    assert "'t001' is float32[3] in the server's model but float32[5] in the trainer's" in message
    assert "client 0" in message and "docs/trainers.md" in message


def test_server_refusal_of_a_mismatched_update_names_the_tensor(tmp_path: Path) -> None:
    server = _server_with_model(tmp_path, "--rounds", "1")

    class WrongUpdates(DeltaTrainer):
        def fit(self, weights: wire.Weights, server_round: int, config: dict) -> FitResult:
            result = super().fit(weights, server_round, config)
            return FitResult({**result.weights, "t001": np.zeros(7, np.float32)}, 1)

    client = FederatedClient(
        server.url, "0", WrongUpdates(shapes=SHAPES), check_model=False, **TIMEOUTS
    )
    try:
        with pytest.raises(ServerError, match=r"'t001' is float32\[7\]; the global model has"):
            client.run()
    finally:
        server.kill()


def test_something_that_is_not_a_trainer_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ClientTaskError, match=r"given a dict, not a Trainer: it has no "):
        join_federation({}, run_id="own", client_id=3, server_address="127.0.0.1:1")  # type: ignore[arg-type]


def test_mismatch_names_missing_extra_and_differing_tensors() -> None:
    f32 = np.zeros((2, 3), np.float32)
    assert mismatch({"a": f32}, {"a": f32.copy()}) is None
    assert "'a' is float32[2, 3] in the server's model but float64[2, 3]" in str(
        mismatch({"a": f32}, {"a": f32.astype(np.float64)})
    )
    many = {f"x{i}": f32 for i in range(5)}
    text = mismatch(many, {"y": f32})
    assert text is not None
    assert "'x0', 'x1', 'x2' and 2 more, which the trainer lacks" in text
    assert "the trainer has 'y', which the server's model lacks" in text
    assert issubclass(ModelMismatch, ValueError) and EvaluateResult(1).metrics == {}


# A user's own client component, as a user would write it in their own module: KFP copies
# its source, runs it with KFP's executor, and it calls join_federation.
USER_COMPONENT = """
from kfp import dsl
from kfp.dsl import Metrics, Output


@dsl.component(base_image="python:3.11", install_kfp_package=False, packages_to_install=[])
def my_client(
    run_id: str,
    client_id: int,
    num_clients: int,
    server_address: str,
    port: int,
    retry_timeout: float,
    metrics: Output[Metrics],
):
    from fl_kubeflow.client.numpy_trainers import DeltaTrainer
    from fl_kubeflow.tasks import join_federation

    trainer = DeltaTrainer(shapes=[(4, 3), (3,)], delta=0.5, evaluate_rounds=True)
    result = join_federation(
        trainer,
        run_id=run_id,
        client_id=client_id,
        server_address=server_address,
        port=port,
        retry_timeout=retry_timeout,
        round_wait_timeout=60.0,
    )
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
"""

RUN_COMPONENT = r"""
import json, sys, warnings
folder, root, address, result_file = sys.argv[1:5]
sys.path.insert(0, folder)
warnings.simplefilter("ignore")  # SubprocessRunner warns about non-"python" image names
import kfp.local
from user_component import my_client

kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=root)
task = my_client(
    run_id="own-component", client_id=0, num_clients=1, server_address=address, port=0,
    retry_timeout=30.0,
)
with open(result_file, "w") as handle:
    json.dump(dict(task.outputs["metrics"].metadata), handle)
"""


def test_own_kfp_component_joins_through_kfps_executor(tmp_path: Path) -> None:
    (tmp_path / "user_component.py").write_text(USER_COMPONENT)
    server = _server_with_model(tmp_path, "--rounds", "2")
    result = tmp_path / "metrics.json"
    env = {k: v for k, v in os.environ.items() if k != "FL_KUBEFLOW_TOKEN"}
    command = [sys.executable, "-c", RUN_COMPONENT, str(tmp_path), str(tmp_path / "root")]
    try:
        done = subprocess.run(
            [*command, server.url, str(result)],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
            env=env,
        )
    finally:
        code = server.wait()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert code == 0, server.log()
    metrics = json.loads(result.read_text())
    assert metrics["rounds_trained"] == 2 and metrics["final_round"] == 2
    assert server.history()["rounds"][-1]["contributors"] == ["0"]
