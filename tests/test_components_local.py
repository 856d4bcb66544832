"""The server and two client components through KFP's own executor (kfp.local), at once.

kfp.local runs a pipeline's tasks one after another, so a server waiting for its
clients would deadlock inside one pipeline. Instead each component runs in its own OS
process, each with ``kfp.local.init(SubprocessRunner(use_venv=False))``: the real
``python -m kfp.dsl.executor_main`` path of the compiled component, artifacts and all.
The clients reach the server through the ``server_address`` override on loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 480.0  # whole federation incl. three TensorFlow start-ups on two shared cores

CHILD = r"""
import json, sys, warnings
repo, root, kind, kwargs_json, result_file = sys.argv[1:6]
sys.path.insert(0, repo)
warnings.simplefilter("ignore")  # SubprocessRunner warns about non-"python" image names
import kfp.local
from fl_kubeflow_kfp.components import DEFAULT_IMAGE, build_components

kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=root)
comps = build_components(DEFAULT_IMAGE)
task = getattr(comps, kind)(**json.loads(kwargs_json))
outputs = {
    name: {"path": art.path, "uri": art.uri, "metadata": dict(art.metadata)}
    if hasattr(art, "path") else {"value": art}  # an output parameter (server_address)
    for name, art in task.outputs.items()
}
with open(result_file, "w") as handle:
    json.dump(outputs, handle)
"""


def _start(tmp: Path, name: str, kind: str, kwargs: dict) -> tuple[subprocess.Popen, Path, Path]:
    root = tmp / f"root-{name}"
    result = tmp / f"{name}.json"
    log = tmp / f"{name}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(REPO), str(root), kind, json.dumps(kwargs), str(result)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=tmp,
        env=env,
    )
    return proc, result, log


@pytest.mark.slow
def test_server_and_two_clients_through_kfp_local(tmp_path: Path) -> None:
    port = free_port()
    training = {
        "trainer": "keras",
        "dataset": "digits",
        "partition": "iid",
        "model": "mlp",
        "local_epochs": 1,
        "batch_size": 32,
        "learning_rate": 0.05,
        "optimizer": "sgd",
        "seed": 0,
    }
    server_kwargs = {
        "run_id": "local-test-run",
        "num_clients": 2,
        "num_rounds": 2,
        "join_timeout": 240.0,
        "round_timeout": 240.0,
        "port": port,
        **training,
    }
    client_kwargs = {
        "run_id": "local-test-run",
        "num_clients": 2,
        "server_address": f"127.0.0.1:{port}",  # no scheme: the task adds http://
        "retry_timeout": 240.0,
        "round_wait_timeout": 300.0,
        **training,
    }
    started = [_start(tmp_path, "server", "server", server_kwargs)]
    started += [
        _start(tmp_path, f"client{i}", "client", {**client_kwargs, "client_id": i})
        for i in range(2)
    ]

    deadline = time.monotonic() + TIMEOUT
    try:
        for proc, _, log in started:
            try:
                code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{log.stem} did not finish within {TIMEOUT:g}s:\n{_tail(log)}")
            assert code == 0, f"{log.stem} exited {code}:\n{_tail(log)}"
    finally:
        for proc, _, _ in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)

    server = json.loads(started[0][1].read_text())
    assert set(server) == {"trained_model", "metrics", "report", "summary", "server_address"}
    # Not in a pod: the address is this machine's, with the scheme the server serves.
    assert server["server_address"] == {"value": f"http://localhost:{port}"}

    model_dir = Path(server["trained_model"]["path"])
    assert {p.name for p in model_dir.iterdir()} >= {
        "model.keras",
        "weights.safetensors",
        "history.json",
    }
    history = json.loads((model_dir / "history.json").read_text())
    assert history["status"] == "finished"
    assert [r["round"] for r in history["rounds"] if r["round"] > 0] == [1, 2]
    model_meta = server["trained_model"]["metadata"]
    assert model_meta["rounds"] == 2 and model_meta["clients"] == 2
    assert model_meta["trainer"] == "keras" and model_meta["framework"] == "keras"
    assert 0.0 <= model_meta["accuracy"] <= 1.0

    metrics = server["metrics"]["metadata"]
    assert metrics["rounds"] == 2 and metrics["clients"] == 2
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0
    # KFP also writes the metrics file the UI reads.
    assert Path(server["metrics"]["path"]).parent.exists()

    report = Path(server["report"]["path"]).read_text(encoding="utf-8")
    assert report.startswith("<!DOCTYPE html>") and "data:image/png;base64," in report
    summary = Path(server["summary"]["path"]).read_text(encoding="utf-8")
    assert "**Status:** finished" in summary

    for _, result, _ in started[1:]:
        client = json.loads(result.read_text())
        client_metrics = client["metrics"]["metadata"]
        assert client_metrics["rounds_trained"] == 2
        assert client_metrics["final_round"] == 2
        assert 0.0 <= client_metrics["accuracy"] <= 1.0

    # The exported model is a real Keras model matching the federation's final weights.
    check = subprocess.run(
        [sys.executable, "-c", LOAD_MODEL, str(model_dir)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert check.returncode == 0, check.stderr[-3000:]
    assert json.loads(check.stdout.strip().splitlines()[-1]) == {"outputs": 10, "matches": True}


# In a child process: keeps TensorFlow out of the pytest process.
LOAD_MODEL = r"""
import json, sys
from pathlib import Path
import numpy as np
import keras
from fl_kubeflow import wire
folder = Path(sys.argv[1])
model = keras.models.load_model(folder / "model.keras")
weights = wire.decode((folder / "weights.safetensors").read_bytes())
saved = sorted(np.asarray(v).tobytes() for v in model.get_weights())
final = sorted(np.asarray(v).tobytes() for v in weights.values())
print(json.dumps({"outputs": int(model.output_shape[-1]), "matches": saved == final}))
"""


def _tail(log: Path, lines: int = 60) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- the runtime entry points the components call, without KFP ---------------------------


def test_client_ids_lists_every_client_and_refuses_none() -> None:
    from fl_kubeflow.tasks import client_ids

    assert client_ids(1) == [0]
    assert client_ids(4) == [0, 1, 2, 3]
    assert client_ids(2.0) == [0, 1]  # an integral float, as the IR stores integers
    for bad in (0, -2, True, 2.5):
        with pytest.raises(ValueError, match="num_clients"):
            client_ids(bad)  # type: ignore[arg-type]


def test_server_address_override_then_service_then_clear_error(tmp_path: Path) -> None:
    from fl_kubeflow.tasks import ClientTaskError, resolve_server_address

    nowhere = tmp_path / "no-token"
    assert resolve_server_address("10.0.0.5:9000", "abc", token_dir=nowhere) == (
        "http://10.0.0.5:9000"
    )
    assert resolve_server_address(" https://fl.example.com ", "abc", token_dir=nowhere) == (
        "https://fl.example.com"
    )
    # In a pod: the service-account namespace file gives the Service's namespace.
    pod = tmp_path / "serviceaccount"
    pod.mkdir()
    (pod / "token").write_text("not-a-jwt")
    (pod / "namespace").write_text("team-a\n")
    run_id = "0f1e2d3c-aaaa-bbbb-cccc-000000000001"
    assert resolve_server_address("", run_id, 8080, token_dir=pod, environ={}) == (
        f"http://fl-{run_id}.team-a.svc:8080"
    )
    # No token but the downward-API namespace: still derivable.
    assert resolve_server_address(
        "", run_id, token_dir=nowhere, environ={"POD_NAMESPACE": "b"}
    ) == (f"http://fl-{run_id}.b.svc:8080")
    with pytest.raises(ClientTaskError, match="server_address"):
        resolve_server_address("", run_id, token_dir=nowhere, environ={})


def test_initial_model_accepts_weights_or_an_earlier_model_folder(tmp_path: Path) -> None:
    from fl_kubeflow.tasks import ServerTaskError
    from fl_kubeflow.tasks.server_task import resolve_initial_weights

    folder = tmp_path / "trained_model"
    folder.mkdir()
    assert resolve_initial_weights(None) is None and resolve_initial_weights("") is None
    with pytest.raises(ServerTaskError, match=r"weights\.safetensors"):
        resolve_initial_weights(folder)
    (folder / "weights.safetensors").write_bytes(b"x")
    assert resolve_initial_weights(folder) == folder / "weights.safetensors"
    assert resolve_initial_weights(folder / "weights.safetensors") == folder / "weights.safetensors"
    (folder / "model.keras").write_bytes(b"x")
    with pytest.raises(ServerTaskError, match="keras"):
        resolve_initial_weights(folder / "model.keras")


def test_failed_run_raises_the_servers_reason_after_writing_report(tmp_path: Path) -> None:
    import numpy as np

    from fl_kubeflow import wire
    from fl_kubeflow.tasks import ServerTaskError, run_server_task

    initial = tmp_path / "earlier"
    initial.mkdir()
    (initial / "weights.safetensors").write_bytes(wire.encode({"w": np.zeros(3, np.float32)}))
    started = time.monotonic()
    with pytest.raises(ServerTaskError, match=r"federated run failed: .*join") as failure:
        run_server_task(
            run_id="no-clients",
            num_clients=2,
            num_rounds=1,
            model_dir=tmp_path / "model",
            join_timeout=1.0,
            port=0,
            initial_model=initial,
            report_path=tmp_path / "report.html",
            summary_path=tmp_path / "summary.md",
            token_dir=tmp_path / "no-token",  # not in a pod: no Service
        )
    assert time.monotonic() - started < 30
    history = json.loads((tmp_path / "model" / "history.json").read_text())
    assert history["status"] == "failed" and history["error"] in str(failure.value)
    assert "failed" in (tmp_path / "report.html").read_text()
    assert "**Status:** failed" in (tmp_path / "summary.md").read_text()
    assert not (tmp_path / "model" / "model.keras").exists()


def test_runtime_never_imports_kfp_and_tasks_import_light() -> None:
    src = REPO / "src" / "fl_kubeflow"
    offenders = [
        str(path.relative_to(REPO))
        for path in src.rglob("*.py")
        if path.name != "submit_cmd.py"  # imports kfp lazily, inside run()
        and any(
            line.strip().startswith(("import kfp", "from kfp"))
            for line in path.read_text().splitlines()
        )
    ]
    assert offenders == []
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, fl_kubeflow.tasks, fl_kubeflow.cli; fl_kubeflow.cli.build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'kfp', 'tensorflow', 'keras', 'kubernetes'}))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
