"""The suite as a user gets it: a wheel installed into a fresh virtualenv outside the repo.

``pip wheel --no-deps`` builds the project from a copy of its sources; ``pip install
'<wheel>[kfp]'`` puts it into a new virtualenv in a temporary folder (from pip's cache, no
``--no-deps``: the extra's requirements resolve as for a user). In that virtualenv, run
from outside the repository with ``python -I`` (no current folder, no ``PYTHONPATH``), a
user's script compiles pipelines from the Python components and from the installed component
files (the single components, and federated training as one step), and finds no top-level
``components`` or ``pipeline`` module.

The virtualenv has no pip of its own: this one installs into it (``pip --python``), and
skips byte-compiling (``--no-compile``), which together take minutes off on a loaded machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from fl_kubeflow_kfp.components import DEFAULT_IMAGE
from fl_kubeflow_kfp.pipeline.suite import component_specs

REPO = Path(__file__).resolve().parents[1]
# Everything the build reads (pyproject.toml's readme, setup.py's package folders).
SOURCES = ("pyproject.toml", "setup.py", "README.md", "src", "components", "pipeline")
BUILD_TIMEOUT = 600.0
INSTALL_TIMEOUT = 900.0
RUN_TIMEOUT = 300.0
IMAGE = "registry.example.com/team/fl-kubeflow:1"

USERS_SCRIPT = r'''
"""A user's own pipelines, from the installed suite only."""
import importlib.util
import json
import sys
from pathlib import Path

from kfp import compiler, dsl, kubernetes

import fl_kubeflow_kfp
from fl_kubeflow_kfp import build_components
from fl_kubeflow_kfp.components import component_names, load
from fl_kubeflow_kfp.pipeline import build_federated_training

out, image = Path(sys.argv[1]), sys.argv[2]


@dsl.component(base_image="python:3.11")
def evaluate(model: dsl.Input[dsl.Model]) -> str:
    return model.uri


def federation(comps, num_clients):
    ids = comps["client_ids"](num_clients=num_clients)
    server = comps["fl_server"](
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, num_clients=num_clients, num_rounds=2
    )
    kubernetes.add_pod_label(server, "fl-kubeflow/role", "server")
    with dsl.ParallelFor(ids.output) as client_id:
        comps["fl_client"](
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, client_id=client_id, num_clients=num_clients
        )
    evaluate(model=server.outputs["trained_model"])


built = build_components(image)
python_components = {
    "client_ids": built.client_ids, "fl_server": built.server, "fl_client": built.client
}


@dsl.pipeline(name="users-python")
def users_python(num_clients: int = 2):
    federation(python_components, num_clients)


@dsl.pipeline(name="users-files")
def users_files(num_clients: int = 2):
    federation({name: load(name) for name in component_names()}, num_clients)


one_step = {"python": build_federated_training(image), "file": load("federated_training")}


@dsl.pipeline(name="users-one-step-python")
def users_one_step_python(num_clients: int = 2):
    training = one_step["python"](num_clients=num_clients, num_rounds=2)
    evaluate(model=training.outputs["trained_model"])


@dsl.pipeline(name="users-one-step-file")
def users_one_step_file(num_clients: int = 2):
    training = one_step["file"](num_clients=num_clients, num_rounds=2)
    evaluate(model=training.outputs["trained_model"])


for pipeline in (users_python, users_files, users_one_step_python, users_one_step_file):
    compiler.Compiler().compile(pipeline, str(out / f"{pipeline.name}.yaml"))
print("RESULT=" + json.dumps({
    "suite": fl_kubeflow_kfp.__file__,
    "prefix": sys.prefix,
    "component_names": component_names(),
    "top_level": {m: importlib.util.find_spec(m) is not None for m in ("components", "pipeline")},
}))
'''


def _run(command: list[str], timeout: float, cwd: Path) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _images(spec: dict) -> dict[str, str]:
    return {
        label: executor["container"]["image"]
        for label, executor in spec["deploymentSpec"]["executors"].items()
    }


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_compiles_users_pipelines(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(source, project / name, ignore=ignore)
        else:
            shutil.copy2(source, project / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    dist = tmp_path / "dist"
    _run([*pip, "wheel", "--no-deps", "-q", "-w", str(dist), str(project)], BUILD_TIMEOUT, tmp_path)
    (wheel,) = dist.glob("fl_kubeflow-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
        files = set(archive.namelist())
    assert tops == {"fl_kubeflow", "fl_kubeflow_kfp", wheel.name.split("-py3")[0] + ".dist-info"}
    for name in component_specs():
        assert f"fl_kubeflow_kfp/components/{name}.yaml" in files

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], RUN_TIMEOUT, tmp_path)
    python = venv / "bin" / "python"
    install = [*pip, "--python", str(python), "install", "-q", "--no-compile", f"{wheel}[kfp]"]
    _run(install, INSTALL_TIMEOUT, tmp_path)

    users = tmp_path / "users"
    users.mkdir()
    script = users / "users_pipeline.py"
    script.write_text(USERS_SCRIPT)
    stdout = _run([str(python), "-I", str(script), str(users), IMAGE], RUN_TIMEOUT, users)
    (line,) = [line for line in stdout.splitlines() if line.startswith("RESULT=")]
    result = json.loads(line.removeprefix("RESULT="))
    assert Path(result["suite"]).resolve().is_relative_to(venv.resolve()), result
    assert Path(result["prefix"]).resolve() == venv.resolve()
    assert result["component_names"] == sorted(component_specs())
    assert result["top_level"] == {"components": False, "pipeline": False}

    for pipeline in ("users-python", "users-files", "users-one-step-python", "users-one-step-file"):
        spec = next(yaml.safe_load_all((users / f"{pipeline}.yaml").read_text()))
        images = _images(spec)
        assert images.keys() >= {"exec-client-ids", "exec-fl-server", "exec-fl-client"}, pipeline
        assert images.pop("exec-evaluate") == "python:3.11"
        # The Python components run in the user's image, the files in the default one.
        assert set(images.values()) == {DEFAULT_IMAGE if "file" in pipeline else IMAGE}, pipeline
        model = spec["root"]["dag"]["tasks"]["evaluate"]["inputs"]["artifacts"]["model"]
        producer = "federated-training" if "one-step" in pipeline else "fl-server"
        assert model["taskOutputArtifact"]["producerTask"] == producer, pipeline
