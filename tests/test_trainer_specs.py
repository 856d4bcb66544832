"""``--trainer MODULE:FACTORY`` through the real CLIs and the server task, TensorFlow-free.

The user modules are written into a temporary folder put on the children's
PYTHONPATH, as a user's package would be installed in their image; their trainers
are numpy ones, so these runs take seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fl_kubeflow import wire
from fl_kubeflow.client.numpy_trainers import random_weights
from tests.fl_processes import run_cli, start_server
from tests.ports import free_port

USER_MODULE = '''
from fl_kubeflow.client.numpy_trainers import DeltaTrainer


def build(options):
    """A user's factory: every TrainerOptions field is available."""
    return DeltaTrainer(shapes=[(4, 3), (3,)], delta=0.25, seed=options.seed, evaluate_rounds=True)


def not_a_trainer(options):
    return 42
'''


@pytest.fixture
def user_path(tmp_path: Path) -> Path:
    """A folder holding the user module ``user_trainers``, for PYTHONPATH."""
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "user_trainers.py").write_text(textwrap.dedent(USER_MODULE))
    return folder


@pytest.fixture
def user_module(user_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``user_trainers`` importable in this process too."""
    monkeypatch.syspath_prepend(str(user_path))


def fl(*args: str, path: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env: dict[str, str | None] = {"FL_KUBEFLOW_TOKEN": None}
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), os.environ.get("PYTHONPATH")]))
    return run_cli(*args, env=env, timeout=timeout)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``fl-kubeflow ARGS`` in this process (errors need no child): exit status, stderr."""
    from fl_kubeflow.cli import main

    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's parser.error
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("trainer", "message"),
    [
        ("no_such_package.trainers:build", "cannot import module 'no_such_package.trainers'"),
        ("user_trainers:missing", "module 'user_trainers' has no attribute 'missing'"),
        ("user_trainers:not_a_trainer", "returned a int, not a Trainer: it has no initial_"),
        ("user_trainers", "is neither a built-in (keras, torch) nor MODULE:FACTORY"),
    ],
)
@pytest.mark.usefixtures("user_module")
def test_client_names_a_bad_trainer(
    capsys: pytest.CaptureFixture[str], trainer: str, message: str
) -> None:
    # Port 1: the trainer is built before any request, so nothing is ever contacted.
    code, stderr = cli(capsys, "client", "--server", "http://127.0.0.1:1", "--trainer", trainer)
    assert code == 2, stderr
    assert f"trainer {trainer!r}" in stderr and message in stderr


@pytest.mark.parametrize(
    ("trainer", "message"),
    [
        ("no_such_package.trainers:build", "cannot find module 'no_such_package.trainers'"),
        ("no_such_module:build", "cannot find module 'no_such_module'"),
        ("user_trainers", "is neither a built-in"),
    ],
)
@pytest.mark.usefixtures("user_module")
def test_local_names_a_bad_trainer_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], trainer: str, message: str
) -> None:
    out = tmp_path / "run"
    code, stderr = cli(capsys, "local", "--output", str(out), "--trainer", trainer)
    assert code == 2, stderr
    assert message in stderr
    assert not out.exists()


def test_local_run_with_a_user_factory(tmp_path: Path, user_path: Path) -> None:
    out = tmp_path / "run"
    done = fl(
        "local",
        "--output",
        str(out),
        "--clients",
        "2",
        "--rounds",
        "2",
        "--trainer",
        "user_trainers:build",
        path=user_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert {"weights.safetensors", "history.json", "report.html", "params.json"} <= {
        p.name for p in out.iterdir()
    }
    # No model.keras: only the built-in Keras trainer's models can be rebuilt without user code.
    assert not (out / "model.keras").exists()
    assert json.loads((out / "params.json").read_text())["trainer"] == "user_trainers:build"
    final = wire.decode((out / "weights.safetensors").read_bytes())
    for name, start in random_weights([(4, 3), (3,)], seed=0).items():
        assert abs(float((final[name] - start).mean()) - 0.5) < 1e-5, name


def test_client_stops_on_a_model_unlike_the_servers(tmp_path: Path, user_path: Path) -> None:
    initial = tmp_path / "initial.safetensors"
    initial.write_bytes(wire.encode(random_weights([(4, 3), (2,)], seed=0)))
    server = start_server(
        tmp_path / "server", "--clients", "1", "--rounds", "1", "--initial-weights", str(initial)
    )
    try:
        done = fl(
            "client", "--server", server.url, "--trainer", "user_trainers:build", path=user_path
        )
        assert done.returncode == 2, done.stderr
        assert server.status()["completed_rounds"] == 0
    finally:
        server.kill()
    assert "tensor 't001' is float32[2] in the server's model but float32[3]" in done.stderr


def test_server_task_of_a_user_trainer_exports_weights_and_says_which_trainer(
    tmp_path: Path, user_path: Path
) -> None:
    from fl_kubeflow.tasks import run_server_task

    port = free_port()
    client = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fl_kubeflow",
            "client",
            "--server",
            f"http://127.0.0.1:{port}",
            "--trainer",
            "user_trainers:build",
            "--retry-timeout",
            "60",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(user_path), "FL_KUBEFLOW_TOKEN": ""},
    )
    try:
        result = run_server_task(
            run_id="user-trainer",
            num_clients=1,
            num_rounds=1,
            model_dir=tmp_path / "model",
            join_timeout=60,
            port=port,
            trainer="user_trainers:build",
            token_dir=tmp_path / "no-pod",
        )
    finally:
        client.wait(timeout=60)
    assert result.keras_path is None
    assert result.model_metadata["trainer"] == "user_trainers:build"
    assert result.model_metadata["framework"] == "custom"
    assert result.model_metadata["files"] == ["weights.safetensors", "history.json"]
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "history.json",
        "weights.safetensors",
    ]


@pytest.mark.usefixtures("user_module")
def test_client_task_builds_the_trainer_a_spec_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the fl-client component calls with the pipeline's trainer parameter.
    from fl_kubeflow.tasks import ClientTaskError, run_client_task

    monkeypatch.delenv("FL_KUBEFLOW_TOKEN", raising=False)
    common = {"run_id": "spec", "client_id": 0, "num_clients": 1, "token_dir": tmp_path / "no"}
    bad = "user_trainers:not_a_trainer"
    with pytest.raises(ClientTaskError, match=rf"client 0: trainer '{bad}' returned a int"):
        run_client_task(server_address="127.0.0.1:1", trainer=bad, **common)
    initial = tmp_path / "initial.safetensors"
    initial.write_bytes(wire.encode(random_weights([(4, 3), (3,)], seed=0)))
    server = start_server(
        tmp_path / "server", "--clients", "1", "--rounds", "1", "--initial-weights", str(initial)
    )
    try:
        result = run_client_task(
            server_address=server.url, trainer="user_trainers:build", retry_timeout=30, **common
        )
    finally:
        code = server.wait()
    assert code == 0, server.log()
    assert result.metrics["rounds_trained"] == 1.0
