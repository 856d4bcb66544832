"""The compiled pipeline YAML has the shape synchronous FL on KFP needs.

Compiles with ``compile.py`` (the documented entry point) into a temporary folder and
checks the result: parameters, the client fan-out, the server's independence of the
clients, caching, the Kubernetes platform section, the exit handler and the image.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from fl_kubeflow import defaults

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "fl_pipeline.yaml"
COMPILE = REPO / "compile.py"
DEFAULT_IMAGE = "ghcr.io/fl-on-kubeflow/fl-kubeflow:0.1.0"
RUN_UUID = "{{$.pipeline_job_uuid}}"
TRAINING_OPTIONS = (
    "trainer",
    "dataset",
    "partition",
    "model",
    "local_epochs",
    "batch_size",
    "learning_rate",
    "optimizer",
    "seed",
)

EXPECTED_PARAMETERS: dict[str, tuple[str, Any]] = {
    "num_clients": ("NUMBER_INTEGER", 3),
    "num_rounds": ("NUMBER_INTEGER", 5),
    # The training options share their defaults with ``fl-kubeflow local``.
    "trainer": ("STRING", defaults.TRAINER),
    "dataset": ("STRING", defaults.DATASET),
    "data_locations": ("STRING", "[]"),
    "label_column": ("STRING", defaults.LABEL_COLUMN),
    "feature_columns": ("STRING", defaults.FEATURE_COLUMNS),
    "data_timeout": ("NUMBER_DOUBLE", defaults.DATA_TIMEOUT),
    "data_credentials": ("STRING", "fl-data-credentials"),
    "partition": ("STRING", defaults.PARTITION),
    "model": ("STRING", defaults.MODEL),
    "local_epochs": ("NUMBER_INTEGER", defaults.LOCAL_EPOCHS),
    "batch_size": ("NUMBER_INTEGER", defaults.BATCH_SIZE),
    "learning_rate": ("NUMBER_DOUBLE", defaults.LEARNING_RATE),
    "optimizer": ("STRING", defaults.OPTIMIZER),
    "strategy": ("STRING", "fedavg"),
    "strategy_options": ("STRING", "{}"),
    "secure_aggregation": ("BOOLEAN", False),
    "secagg_options": ("STRING", ""),
    "mode": ("STRING", "sync"),
    "async_options": ("STRING", ""),
    "min_clients": ("NUMBER_INTEGER", 0),
    "round_timeout": ("NUMBER_DOUBLE", 600.0),
    "join_timeout": ("NUMBER_DOUBLE", 900.0),
    "seed": ("NUMBER_INTEGER", defaults.SEED),
    "server_address": ("STRING", ""),
    "initial_model_uri": ("STRING", ""),
    "checkpoint_pvc": ("STRING", ""),
    "server_cpu_request": ("STRING", "500m"),
    "server_cpu_limit": ("STRING", "2"),
    "server_memory_request": ("STRING", "1Gi"),
    "server_memory_limit": ("STRING", "4Gi"),
    "client_cpu_request": ("STRING", "1"),
    "client_cpu_limit": ("STRING", "2"),
    "client_memory_request": ("STRING", "1Gi"),
    "client_memory_limit": ("STRING", "4Gi"),
}
RESOURCE_KEYS = {
    "resourceCpuRequest": "cpu_request",
    "resourceCpuLimit": "cpu_limit",
    "resourceMemoryRequest": "memory_request",
    "resourceMemoryLimit": "memory_limit",
}


def compile_to(path: Path, *image_args: str) -> Path:
    done = subprocess.run(
        [sys.executable, str(REPO / "compile.py"), "--output", str(path), *image_args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return path


@functools.cache
def compile_main() -> Callable[[list[str]], int]:
    """compile.py's ``main``, imported into this process once: the options below are checked
    by calling it, which spares a fresh interpreter's ~10 s of imports (KFP builds each
    pipeline as its module loads) per call. The script itself runs in ``compile_to``."""
    loaded = importlib.util.spec_from_file_location("fl_kubeflow_compile_script", COMPILE)
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module.main  # type: ignore[no-any-return]


def compile_with(path: Path, *options: str) -> Path:
    """``python compile.py --output PATH OPTIONS...`` by its ``main``, in this process."""
    assert compile_main()(["--output", str(path), *options]) == 0
    return path


def refused(capsys: pytest.CaptureFixture[str], *options: str) -> str:
    """compile.py's ``main`` given ``options`` exits with 2, as its argparse errors do; the
    stderr it wrote."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        compile_main()(list(options))
    assert exited.value.code == 2
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_to(tmp_path_factory.mktemp("compiled") / "fl_pipeline.yaml")


@pytest.fixture(scope="module")
def docs(compiled: Path) -> tuple[dict, dict]:
    pipeline, platform = list(yaml.safe_load_all(compiled.read_text()))
    return pipeline, platform


@pytest.fixture(scope="module")
def spec(docs: tuple[dict, dict]) -> dict:
    return docs[0]


def dags(spec: dict) -> Iterator[tuple[str, dict]]:
    """(name, dag) for the root and every DAG component."""
    yield "root", spec["root"]["dag"]
    for name, component in spec["components"].items():
        if "dag" in component:
            yield name, component["dag"]


def tasks_of(spec: dict, component: str) -> list[tuple[str, str, dict]]:
    """(dag name, task name, task) for every task running ``component``."""
    return [
        (dag_name, task_name, task)
        for dag_name, dag in dags(spec)
        for task_name, task in dag["tasks"].items()
        if task["componentRef"]["name"] == component
    ]


def server_components(spec: dict) -> list[str]:
    """Every variant of the server component (initial model x checkpoints)."""
    return sorted(c for c in spec["components"] if re.fullmatch(r"comp-fl-server(-\d+)?", c))


def parent_of(spec: dict, dag_component: str) -> tuple[str, str, dict]:
    """The task (with its DAG) that runs the DAG component ``dag_component``."""
    (found,) = tasks_of(spec, dag_component)
    return found


def ancestors(spec: dict, dag_name: str) -> list[str]:
    """DAG components enclosing ``dag_name``, innermost first, ending with root."""
    chain = [dag_name]
    while chain[-1] != "root":
        chain.append(parent_of(spec, chain[-1])[0])
    return chain


def test_yaml_loads_back_with_kfp(compiled: Path, docs: tuple[dict, dict]) -> None:
    from kfp import components

    loaded = components.load_component_from_file(str(compiled))
    assert loaded.name == "fl-kubeflow"
    assert set(loaded.component_spec.inputs) == set(EXPECTED_PARAMETERS)
    # The backend parses the same two documents into these protos.
    json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())


def test_every_parameter_with_default_and_description(spec: dict) -> None:
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == set(EXPECTED_PARAMETERS)
    for name, (kind, default) in EXPECTED_PARAMETERS.items():
        assert params[name]["parameterType"] == kind, name
        assert params[name]["defaultValue"] == default, name
        assert params[name].get("isOptional") is True, name
        assert len(params[name].get("description", "")) > 10, f"{name} has no description"
    assert spec["pipelineInfo"]["description"]


def test_component_inputs_and_outputs_are_documented(spec: dict) -> None:
    for name in ("comp-fl-server", "comp-fl-client", "comp-fl-cleanup", "comp-client-ids"):
        component = spec["components"][name]
        for section in ("inputDefinitions", "outputDefinitions"):
            for kind in ("parameters", "artifacts"):
                for key, value in component.get(section, {}).get(kind, {}).items():
                    if section == "outputDefinitions" and key == "Output":
                        continue  # a return value: KFP has no name to attach a description to
                    assert value.get("description"), f"{name}: {key} has no description"


def test_component_defaults_match_the_shared_defaults(spec: dict) -> None:
    # Component defaults are literals (KFP copies the source); keep them in step.
    shared = {k: v for k, (_, v) in EXPECTED_PARAMETERS.items() if k in TRAINING_OPTIONS}
    for name in ("comp-fl-server", "comp-fl-client"):
        params = spec["components"][name]["inputDefinitions"]["parameters"]
        for key, value in shared.items():
            assert params[key]["defaultValue"] == value, f"{name}: {key}"


def test_trainer_parameter_reaches_the_server_and_every_client(spec: dict) -> None:
    # The clients build their trainer from it; the server decides from it what it exports.
    for component in (*server_components(spec), "comp-fl-client"):
        for _, name, task in tasks_of(spec, component):
            source = task["inputs"]["parameters"]["trainer"]["componentInputParameter"]
            assert source in ("trainer", "pipelinechannel--trainer"), name


@pytest.mark.parametrize(
    "keys", [("secure_aggregation", "secagg_options"), ("mode", "async_options")]
)
@pytest.mark.parametrize("name", ["fl_pipeline.yaml", "fl_server_pipeline.yaml"])
def test_server_switches_reach_every_server_task(
    compiled: Path, name: str, keys: tuple[str, str]
) -> None:
    # The all-in-one and the server pipeline: secure aggregation's switch and its options,
    # the mode (sync/async) and its options, passed down through every DAG to each server
    # variant (initial model x checkpoints).
    other = next(yaml.safe_load_all((compiled.parent / name).read_text()))
    root = other["root"]["inputDefinitions"]["parameters"]
    component = other["components"]["comp-fl-server"]["inputDefinitions"]["parameters"]
    for key in keys:
        kind, default = EXPECTED_PARAMETERS[key]
        assert (root[key]["parameterType"], root[key]["defaultValue"]) == (kind, default), key
        assert component[key]["defaultValue"] == default, key
    servers = [t for c in server_components(other) for t in tasks_of(other, c)]
    assert len(servers) == 4
    for dag_name, task_name, task in servers:
        for key in keys:
            source = task["inputs"]["parameters"][key]["componentInputParameter"]
            assert source in (key, f"pipelinechannel--{key}"), (dag_name, task_name, key)


def test_server_outputs_are_typed_artifacts(spec: dict) -> None:
    outputs = spec["components"]["comp-fl-server"]["outputDefinitions"]["artifacts"]
    kinds = {name: value["artifactType"]["schemaTitle"] for name, value in outputs.items()}
    assert kinds == {
        "trained_model": "system.Model",
        "metrics": "system.Metrics",
        "report": "system.HTML",
        "summary": "system.Markdown",
    }
    initial = spec["components"]["comp-fl-server"]["inputDefinitions"]["artifacts"]
    assert initial["initial_model"]["isOptional"] is True
    client_outputs = spec["components"]["comp-fl-client"]["outputDefinitions"]["artifacts"]
    assert client_outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"


def test_clients_fan_out_over_the_ids_without_a_parallelism_limit(spec: dict) -> None:
    ((loop_dag, client_task_name, client_task),) = tasks_of(spec, "comp-fl-client")
    outer_dag, _, loop_task = parent_of(spec, loop_dag)
    iterator = loop_task["parameterIterator"]
    assert "iteratorPolicy" not in loop_task and "iteratorPolicy" not in iterator
    assert "parallelism" not in yaml.safe_dump(loop_task)
    channel = iterator["items"]["inputParameter"]
    producer = loop_task["inputs"]["parameters"][channel]["taskOutputParameter"]
    ids_task = dict(dags(spec))[outer_dag]["tasks"][producer["producerTask"]]
    assert ids_task["componentRef"]["name"] == "comp-client-ids"
    # Each client gets its loop item as client_id, and the run UUID whole.
    inputs = client_task["inputs"]["parameters"]
    assert inputs["client_id"]["componentInputParameter"] == iterator["itemInput"]
    assert inputs["run_id"]["runtimeValue"]["constant"] == RUN_UUID
    assert client_task_name == "fl-client"


def test_server_does_not_depend_on_the_clients(spec: dict) -> None:
    ((loop_dag, _, _),) = tasks_of(spec, "comp-fl-client")
    _, loop_task_name, _ = parent_of(spec, loop_dag)
    servers = [t for c in server_components(spec) for t in tasks_of(spec, c)]
    # With and without an initial model, each with and without checkpoints.
    assert len(servers) == 4
    for dag_name, _, server in servers:
        assert server["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == RUN_UUID
        assert all(d != loop_task_name for d in server.get("dependentTasks", []))
        # Nor does any enclosing condition wait for the loop or the clients.
        for enclosing in ancestors(spec, dag_name)[:-1]:
            _, _, wrapper = parent_of(spec, enclosing)
            assert loop_task_name not in wrapper.get("dependentTasks", [])
            assert "client-ids" not in wrapper.get("dependentTasks", [])
        text = yaml.safe_dump(server)
        assert "fl-client" not in text and loop_task_name not in text


def test_caching_is_off_on_every_fl_task(spec: dict) -> None:
    fl_components = (*server_components(spec), "comp-fl-client", "comp-fl-cleanup")
    for component in fl_components:
        for _, name, task in tasks_of(spec, component):
            assert task["cachingOptions"] == {}, f"{name} is cached"


def test_cleanup_is_the_exit_task(spec: dict) -> None:
    root_tasks = spec["root"]["dag"]["tasks"]
    ((dag_name, name, cleanup),) = tasks_of(spec, "comp-fl-cleanup")
    assert dag_name == "root"
    assert cleanup["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    (handler,) = cleanup["dependentTasks"]
    assert root_tasks[handler]["componentRef"]["name"].startswith("comp-exit-handler")
    assert cleanup["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == RUN_UUID
    # Every other FL task sits inside the exit handler.
    assert set(root_tasks) == {name, handler}
    for component in (*server_components(spec), "comp-fl-client", "comp-client-ids"):
        for dag_name, _, _ in tasks_of(spec, component):
            assert root_tasks[handler]["componentRef"]["name"] in ancestors(spec, dag_name)


def test_kubernetes_section_labels_the_server_and_exposes_the_namespace(
    docs: tuple[dict, dict],
) -> None:
    spec, platform = docs
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    server_executors = [
        spec["components"][component]["executorLabel"] for component in server_components(spec)
    ]
    for label in server_executors:
        assert executors[label]["podMetadata"]["labels"] == {"fl-kubeflow/role": "server"}
    client_label = spec["components"]["comp-fl-client"]["executorLabel"]
    assert executors[client_label]["podMetadata"]["labels"]["fl-kubeflow/role"] != "server"
    cleanup_label = spec["components"]["comp-fl-cleanup"]["executorLabel"]
    for label in [*server_executors, client_label, cleanup_label]:
        assert {"name": "POD_NAMESPACE", "fieldPath": "metadata.namespace"} in executors[label][
            "fieldPathAsEnv"
        ]


def test_resources_are_pipeline_parameters_of_server_and_clients(spec: dict) -> None:
    # The driver resolves these placeholders from the task's inputs when it makes the pod.
    containers = spec["deploymentSpec"]["executors"]
    for component, role in [(c, "server") for c in server_components(spec)] + [
        ("comp-fl-client", "client")
    ]:
        label = spec["components"][component]["executorLabel"]
        resources = containers[label]["container"]["resources"]
        assert resources == {
            key: f"{{{{$.inputs.parameters['pipelinechannel--{role}_{name}']}}}}"
            for key, name in RESOURCE_KEYS.items()
        }, component
        for dag_name, _, task in tasks_of(spec, component):
            inputs = task["inputs"]["parameters"]
            for name in RESOURCE_KEYS.values():
                channel = f"pipelinechannel--{role}_{name}"
                # Passed down from the root parameter of that name, through every DAG.
                assert inputs[channel]["componentInputParameter"] == channel
                for enclosing in ancestors(spec, dag_name)[:-1]:
                    _, _, wrapper = parent_of(spec, enclosing)
                    source = wrapper["inputs"]["parameters"][channel]["componentInputParameter"]
                    assert source in (channel, f"{role}_{name}")


def test_every_input_a_task_takes_is_declared_where_it_comes_from(spec: dict) -> None:
    # What the driver resolves: a task's componentInputParameter must be an input of the
    # DAG the task sits in, and a placeholder in a constant must name an input of the task.
    placeholder = re.compile(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}")
    for dag_name, dag in dags(spec):
        owner = spec["root"] if dag_name == "root" else spec["components"][dag_name]
        declared = owner.get("inputDefinitions", {}).get("parameters", {})
        for task_name, task in dag["tasks"].items():
            inputs = task.get("inputs", {}).get("parameters", {})
            for name, value in inputs.items():
                source = value.get("componentInputParameter")
                assert source is None or source in declared, f"{dag_name}/{task_name}: {name}"
                constant = value.get("runtimeValue", {}).get("constant")
                for used in placeholder.findall(constant if isinstance(constant, str) else ""):
                    assert used in inputs, f"{dag_name}/{task_name}: {name} uses {used}"


def test_resource_defaults_are_compile_options_and_checked(
    spec: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = ["--server-cpu-request", "100m", "--client-memory-limit", "1536Mi"]
    other = next(yaml.safe_load_all(compile_with(tmp_path / "small.yaml", *options).read_text()))
    params = other["root"]["inputDefinitions"]["parameters"]
    assert params["server_cpu_request"]["defaultValue"] == "100m"
    assert params["client_memory_limit"]["defaultValue"] == "1536Mi"
    # Only those two defaults differ from the default compilation.
    for name, value in params.items():
        if name not in ("server_cpu_request", "client_memory_limit"):
            assert value == spec["root"]["inputDefinitions"]["parameters"][name], name
    assert other["deploymentSpec"] == spec["deploymentSpec"]
    for bad, message in [
        (["--server-cpu-request", "2 cores"], "'2 cores' is not a Kubernetes quantity"),
        (["--client-memory-request", "8Gi"], "memory request '8Gi' exceeds its limit '4Gi'"),
        (["--server-cpu-limit", ""], "cpu_limit must be a Kubernetes quantity"),
    ]:
        output = tmp_path / "bad.yaml"
        stderr = refused(capsys, "--output", str(output), *bad)
        assert message in stderr, stderr
        assert not output.exists()


def _container_images(spec: dict) -> set[str]:
    executors = spec["deploymentSpec"]["executors"]
    return {e["container"]["image"] for e in executors.values() if "container" in e}


def test_components_run_without_pip_at_runtime(spec: dict) -> None:
    for executor in spec["deploymentSpec"]["executors"].values():
        if "container" not in executor:
            continue  # the importer
        command = " ".join(executor["container"]["command"])
        assert "pip install" not in command
        assert "kfp.dsl.executor_main" in command


def test_image_is_configurable(spec: dict, tmp_path: Path) -> None:
    assert _container_images(spec) == {DEFAULT_IMAGE}
    custom = "registry.example.com/team/fl-kubeflow:test"
    other = yaml.safe_load_all(
        compile_with(tmp_path / "custom.yaml", "--image", custom).read_text()
    )
    other_spec = next(other)
    assert _container_images(other_spec) == {custom}
    assert other_spec["deploymentSpec"]["executors"].keys() == (
        spec["deploymentSpec"]["executors"].keys()
    )


def test_bad_image_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "x.yaml"
    stderr = refused(capsys, "--output", str(output), "--image", "a b")
    assert "image" in stderr and not output.exists()


def test_compilation_is_deterministic(compiled: Path, tmp_path: Path) -> None:
    again = compile_to(tmp_path / "again.yaml")
    assert again.read_bytes() == compiled.read_bytes()


def test_committed_yaml_is_up_to_date(compiled: Path) -> None:
    assert COMMITTED.is_file(), "fl_pipeline.yaml is missing: run python compile.py"
    assert COMMITTED.read_bytes() == compiled.read_bytes(), (
        "fl_pipeline.yaml is stale: run python compile.py and commit it"
    )


def test_checkpointed_servers_mount_the_pvc_and_retry(docs: tuple[dict, dict]) -> None:
    spec, platform = docs
    assert spec["root"]["inputDefinitions"]["parameters"]["checkpoint_pvc"]["defaultValue"] == ""
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    mounted, retried = 0, 0
    for component in server_components(spec):
        label = spec["components"][component]["executorLabel"]
        mounts = executors[label].get("pvcMount", [])
        for _, _, task in tasks_of(spec, component):
            checkpoint_dir = task["inputs"]["parameters"]["checkpoint_dir"]["runtimeValue"]
            if mounts:
                assert mounts[0]["mountPath"] == checkpoint_dir["constant"] == "/fl-checkpoint"
                assert mounts[0]["pvcNameParameter"]["componentInputParameter"].endswith(
                    "checkpoint_pvc"
                )
                policy = task["retryPolicy"]
                assert policy["maxRetryCount"] >= 1
                # Every pod may take its whole time before it is lost: KFP's default
                # deadline of 3600s would forbid retrying a default run after an hour.
                longest = 900.0 + 5 * 600.0  # join_timeout + num_rounds x round_timeout
                deadline = int(policy["backoffMaxDuration"].removesuffix("s"))
                assert deadline > (policy["maxRetryCount"] + 1) * longest
                mounted += 1
                retried += 1
            else:
                assert checkpoint_dir["constant"] == ""
                assert "retryPolicy" not in task
    assert mounted == retried == 2


def test_server_restarts_in_pod_and_the_retry_deadline_is_a_compile_option(
    spec: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    servers = [t for c in server_components(spec) for _, _, t in tasks_of(spec, c)]
    for task in servers:
        assert task["inputs"]["parameters"]["max_restarts"]["runtimeValue"]["constant"] == 2
    other = next(
        yaml.safe_load_all(
            compile_with(tmp_path / "d.yaml", "--server-retry-deadline", "86400").read_text()
        )
    )
    deadlines = {
        task["retryPolicy"]["backoffMaxDuration"]
        for c in server_components(other)
        for _, _, task in tasks_of(other, c)
        if "retryPolicy" in task
    }
    assert deadlines == {"86400s"}
    stderr = refused(capsys, "--output", str(tmp_path / "x.yaml"), "--server-retry-deadline", "0")
    assert "retry_deadline must be at least 1 second" in stderr, stderr
