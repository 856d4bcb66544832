"""The component files ``components/<name>.yaml`` and ``docs/components.md``.

They are fresh compiles (as ``fl_pipeline.yaml`` is, see test_pipeline_compile), they load
with ``kfp.components.load_component_from_file`` and compile into a user's pipeline with
the interface of the Python components, the installed ones load by name, and one of them
runs through KFP's own executor (``kfp.local``).

No ``from __future__ import annotations``: KFP reads the test pipeline's annotations as objects.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fl_kubeflow_kfp.components import (
    DEFAULT_IMAGE,
    component_file,
    component_names,
    load,
)
from fl_kubeflow_kfp.pipeline import build_pipeline
from fl_kubeflow_kfp.pipeline.reference import render_reference
from fl_kubeflow_kfp.pipeline.suite import component_specs
from kfp import compiler, components, dsl, kubernetes

from fl_kubeflow.kube.naming import SERVER_ROLE, SERVER_ROLE_LABEL
from tests.test_pipeline_compile import compile_to

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = REPO / "components"
REFERENCE = REPO / "docs" / "components.md"
STALE = "run python compile.py and commit the result"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with what ``python compile.py`` writes, compiled from scratch."""
    return compile_to(tmp_path_factory.mktemp("suite") / "fl_pipeline.yaml").parent


def test_committed_component_files_are_fresh_and_complete(compiled: Path) -> None:
    fresh = {path.name: path.read_bytes() for path in (compiled / "components").glob("*.yaml")}
    committed = {path.name: path.read_bytes() for path in COMPONENTS.glob("*.yaml")}
    expected = sorted(f"{name}.yaml" for name in component_specs())
    assert sorted(fresh) == expected
    assert sorted(committed) == expected, f"components/ differs from the suite: {STALE}"
    for name in expected:
        assert committed[name] == fresh[name], f"components/{name} is stale: {STALE}"


def test_committed_reference_is_fresh(compiled: Path) -> None:
    fresh = (compiled / "docs" / "components.md").read_bytes()
    assert REFERENCE.is_file() and REFERENCE.read_bytes() == fresh, f"{REFERENCE} is stale: {STALE}"


def test_component_files_take_the_image_and_folders_given(tmp_path: Path) -> None:
    image = "registry.example.com/team/fl-kubeflow:2"
    compile_to(
        tmp_path / "out" / "fl_pipeline.yaml",
        *("--image", image, "--components-dir", str(tmp_path / "files")),
        *("--reference", str(tmp_path / "reference.md")),
    )
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "fl_client_pipeline.yaml",
        "fl_pipeline.yaml",
        "fl_server_pipeline.yaml",
    ]
    for name in component_specs():
        spec = next(yaml.safe_load_all((tmp_path / "files" / f"{name}.yaml").read_text()))
        images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
        assert images == {image}, name
    # The reference describes interfaces, not images: the same as the committed one.
    assert (tmp_path / "reference.md").read_bytes() == REFERENCE.read_bytes()


def _section(text: str, anchor: str) -> str:
    start = text.index(f'<a id="{anchor}"></a>')
    end = text.find('<a id="', start + 1)
    return text[start : end if end > 0 else text.index("\n## ", start)]


def test_reference_lists_every_input_and_output_with_its_description() -> None:
    specs = component_specs()
    pipeline = build_pipeline()
    text = render_reference(specs, pipeline, "fl_pipeline.yaml")
    sections = {name: _section(text, name) for name in specs}
    sections[pipeline.name] = text[text.index("## The pipeline") :]
    for name, component in [*specs.items(), (pipeline.name, pipeline)]:
        spec = component.component_spec
        rows = {
            line.split(" | ")[0].removeprefix("| "): line
            for line in sections[name].splitlines()
            if line.startswith("| `")
        }
        for key, value in [*spec.inputs.items(), *(spec.outputs or {}).items()]:
            assert f"`{key}`" in rows, f"{name}: {key} missing"
            assert value.description, f"{name}: {key} has no docstring entry"
            words = value.description.split()
            assert " ".join(words).replace("<", "&lt;").replace(">", "&gt;") in rows[f"`{key}`"]
        for key, value in spec.inputs.items():
            if not value.optional:
                assert "*(required)*" in rows[f"`{key}`"], f"{name}: {key}"
            elif isinstance(value.default, (int, float)) and not isinstance(value.default, bool):
                assert f"`{value.default}`" in rows[f"`{key}`"], f"{name}: {key}"
    assert "| `num_clients` | int | *(required)* |" in sections["client_ids"]
    assert "| `trained_model` | Model (artifact) |" in sections["fl_server"]
    assert "| `batch_size` | int | `16` |" in sections[pipeline.name]


def _executors(package: Path) -> dict[str, dict]:
    spec = next(yaml.safe_load_all(package.read_text()))
    return {
        label: executor["container"]
        for label, executor in spec["deploymentSpec"]["executors"].items()
    }


def test_component_files_load_and_compile_into_a_users_pipeline(tmp_path: Path) -> None:
    loaded = {
        name: components.load_component_from_file(str(COMPONENTS / f"{name}.yaml"))
        for name in component_specs()
    }
    for name, python_component in component_specs().items():
        spec, built = loaded[name].component_spec, python_component.component_spec
        assert spec.name == built.name
        assert spec.inputs.keys() == built.inputs.keys(), name
        assert (spec.outputs or {}).keys() == (built.outputs or {}).keys(), name
    own_image = "registry.example.com/team/fl-kubeflow:1"

    @dsl.pipeline(name="from-component-files")
    def users_pipeline(num_clients: int = 2, num_rounds: int = 2):
        cleanup = loaded["fl_cleanup"](run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        with dsl.ExitHandler(cleanup):
            ids = loaded["client_ids"](num_clients=num_clients)
            server = loaded["fl_server"](
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                num_clients=num_clients,
                num_rounds=num_rounds,
            )
            kubernetes.add_pod_label(server, SERVER_ROLE_LABEL, SERVER_ROLE)
            with dsl.ParallelFor(ids.output) as client_id:
                client = loaded["fl_client"](
                    run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                    client_id=client_id,
                    num_clients=num_clients,
                )
                client.set_container_image(own_image)

    package = tmp_path / "users_pipeline.yaml"
    compiler.Compiler().compile(users_pipeline, package_path=str(package))
    executors = _executors(package)
    # The container components; the graph ones (federated_training...) have their own test.
    containers = {n: c for n, c in loaded.items() if c.component_spec.implementation.container}
    assert executors.keys() == {f"exec-{c.name}" for c in containers.values()}
    for name, component in containers.items():
        container = executors[f"exec-{component.name}"]
        # What the file holds is what runs: the same command and function source.
        assert container == {
            **_executors(COMPONENTS / f"{name}.yaml")[f"exec-{component.name}"],
            **({"image": own_image} if name == "fl_client" else {}),
        }
        assert "kfp.dsl.executor_main" in " ".join(container["command"])
    assert executors["exec-fl-server"]["image"] == DEFAULT_IMAGE


def test_installed_files_load_by_name() -> None:
    assert component_names() == sorted(component_specs())
    for name in component_names():
        assert component_file(name) == COMPONENTS / f"{name}.yaml"
        assert (
            load(name).component_spec
            == components.load_component_from_file(str(COMPONENTS / f"{name}.yaml")).component_spec
        )
    for bad in ("fl_nothing", "../fl_pipeline", "fl_server.yaml"):
        with pytest.raises(ValueError, match=r"no component file .* installed: client_ids, "):
            component_file(bad)


CHILD = r"""
import json, sys, warnings
warnings.simplefilter("ignore")  # SubprocessRunner warns about non-"python" image names
import kfp.local
from fl_kubeflow_kfp.components import load

kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=sys.argv[1])
print("OUTPUT=" + json.dumps(load("client_ids")(num_clients=3).output))
"""


def test_client_ids_file_runs_through_kfp_local(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "root")],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("OUTPUT=")]
    assert json.loads(line.removeprefix("OUTPUT=")) == [0, 1, 2]


def test_readme_example_compiles(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Use the suite in your own pipeline") :]
    section = section[: section.index("\n## ", 1)]
    script = "\n".join(re.findall(r"```python\n(.*?)```", section, flags=re.S))
    (tmp_path / "example.py").write_text(script)
    done = subprocess.run(
        [sys.executable, "example.py"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    spec = next(yaml.safe_load_all((tmp_path / "my_pipeline.yaml").read_text()))
    tasks = spec["root"]["dag"]["tasks"]
    model = tasks["evaluate"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]
    assert model == {"outputArtifactKey": "trained_model", "producerTask": "federated-training"}
    # The federation's steps inside the graph component: never cached.
    inner = [
        (name, task)
        for component in spec["components"].values()
        for name, task in component.get("dag", {}).get("tasks", {}).items()
    ]
    steps = [(name, task) for name, task in inner if name.startswith(("fl-server", "fl-client"))]
    assert {name.split("-")[1] for name, _ in steps} == {"server", "client"}
    assert all(task["cachingOptions"] == {} for _, task in steps)
