"""The cross-silo pair: the server pipeline and the client pipeline, as ``compile.py`` writes them.

What the design relies on is checked in the compiled YAML: the parameters a data owner
and a server operator see (with their defaults and descriptions), what reaches the
server and client components, the Secrets mounted by parameter name (the TLS Secret
optional, the credential Secret not), the node IP for a NodePort address, the exit
handler deleting the stable-named Service, and the server's ``server_address`` output.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fl_kubeflow_kfp.pipeline.client_pipeline import (
    CLIENT_PIPELINE_FILE,
    build_client_pipeline,
)
from fl_kubeflow_kfp.pipeline.federation import CREDENTIAL_MOUNT, TLS_MOUNT
from fl_kubeflow_kfp.pipeline.server_pipeline import (
    CROSS_SILO_JOIN_TIMEOUT,
    DEFAULT_CREDENTIALS_SECRET,
    DEFAULT_SERVICE_NAME,
    DEFAULT_TLS_SECRET,
    SERVER_PIPELINE_FILE,
    build_server_pipeline,
)
from kfp import compiler

from fl_kubeflow import defaults
from fl_kubeflow.kube.service import NODE_IP_ENV
from tests.test_pipeline_compile import compile_to

REPO = Path(__file__).resolve().parents[1]
SERVER_PARAMETERS = {
    "num_clients": defaults.NUM_CLIENTS,
    "num_rounds": defaults.NUM_ROUNDS,
    "join_timeout": CROSS_SILO_JOIN_TIMEOUT,
    "service_name": DEFAULT_SERVICE_NAME,
    "service_type": "ClusterIP",
    "node_port": 0,
    "tls_secret": DEFAULT_TLS_SECRET,
    "allow_plaintext": False,
    "credentials_secret": DEFAULT_CREDENTIALS_SECRET,
    "credentials_reload": 2.0,
    "checkpoint_pvc": "",
    "initial_model_uri": "",
}
CLIENT_PARAMETERS = {
    "server_address": "",
    "shard": 0,
    "num_shards": 1,
    "data_locations": "[]",
    "data_credentials": "fl-data-credentials",
    "retry_timeout": CROSS_SILO_JOIN_TIMEOUT,
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_to(tmp_path_factory.mktemp("silos") / "fl_pipeline.yaml").parent


def load(path: Path) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.mark.parametrize("name", [SERVER_PIPELINE_FILE, CLIENT_PIPELINE_FILE])
def test_committed_silo_pipelines_are_fresh(folder: Path, name: str) -> None:
    committed = REPO / name
    assert committed.is_file() and committed.read_bytes() == (folder / name).read_bytes(), (
        f"{name} is stale: run python compile.py and commit it"
    )


def test_server_pipeline_parameters_and_defaults(folder: Path) -> None:
    spec, _ = load(folder / SERVER_PIPELINE_FILE)
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    for name, default in SERVER_PARAMETERS.items():
        assert parameters[name]["defaultValue"] == default, name
    # A server alone: no client-side parameter, no in-cluster address to override.
    for absent in ("server_address", "label_column", "data_credentials", "client_cpu_request"):
        assert absent not in parameters
    assert spec["pipelineInfo"]["name"] == "fl-kubeflow-server"
    # Every parameter is described (the KFP UI shows these).
    assert all(p.get("description") for p in parameters.values())


def test_server_pipeline_docstring_describes_every_parameter() -> None:
    pipeline = build_server_pipeline()
    inputs = pipeline.component_spec.inputs or {}
    assert {*SERVER_PARAMETERS} <= {*inputs}
    assert all(spec.description for spec in inputs.values())
    assert "TLS required" in inputs["service_type"].description


def test_server_tasks_get_access_options_tls_volume_and_node_ip(folder: Path) -> None:
    spec, executors = load(folder / SERVER_PIPELINE_FILE)
    servers = {name: e for name, e in executors.items() if name.startswith("exec-fl-server")}
    assert len(servers) == 4  # with/without checkpoints x with/without an initial model
    for executor in servers.values():
        [volume] = executor["secretAsVolume"]
        assert volume["mountPath"] == TLS_MOUNT and volume["optional"] is True
        assert volume["secretNameParameter"]["componentInputParameter"].endswith("tls_secret")
        envs = {(e["name"], e["fieldPath"]) for e in executor["fieldPathAsEnv"]}
        assert (NODE_IP_ENV, "status.hostIP") in envs
        assert executor["podMetadata"]["labels"] == {"fl-kubeflow/role": "server"}
    # The tasks pass the access parameters through and mount TLS where the task reads it.
    tasks = [
        task
        for component in spec["components"].values()
        for task in component.get("dag", {}).get("tasks", {}).values()
        if task["componentRef"]["name"].startswith("comp-fl-server")
    ]
    assert len(tasks) == 4
    for task in tasks:
        inputs = task["inputs"]["parameters"]
        assert inputs["tls_dir"]["runtimeValue"]["constant"] == TLS_MOUNT
        for name in ("service_type", "credentials_secret", "service_name", "node_port"):
            assert inputs[name]["componentInputParameter"].endswith(name)
    # The server's address is an output parameter of every variant.
    server = spec["components"]["comp-fl-server"]
    assert server["outputDefinitions"]["parameters"]["server_address"]["parameterType"] == "STRING"
    # The exit handler deletes the stable-named Service; a server run made no credentials.
    cleanup = spec["root"]["dag"]["tasks"]["fl-cleanup"]["inputs"]["parameters"]
    assert cleanup["service_name"]["componentInputParameter"] == "service_name"
    assert cleanup["num_clients"]["runtimeValue"]["constant"] == 0


def test_client_pipeline_parameters_mount_and_no_server_namespace(folder: Path) -> None:
    spec, executors = load(folder / CLIENT_PIPELINE_FILE)
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    # The credential Secret's name is required: there is no client without one.
    assert "defaultValue" not in parameters["credential_secret"]
    assert parameters["credential_secret"].get("isOptional") is not True
    for name, default in CLIENT_PARAMETERS.items():
        assert parameters[name]["defaultValue"] == default, name
    for absent in ("num_rounds", "strategy", "service_type", "server_cpu_request"):
        assert absent not in parameters
    assert all(p.get("description") for p in parameters.values())
    [executor] = executors.values()
    [volume] = executor["secretAsVolume"]
    assert volume["mountPath"] == CREDENTIAL_MOUNT and volume["optional"] is False
    assert volume["secretNameParameter"]["componentInputParameter"] == "credential_secret"
    # No POD_NAMESPACE: the client derives nothing from (and reads nothing in) a namespace.
    assert "fieldPathAsEnv" not in executor
    [task] = spec["root"]["dag"]["tasks"].values()
    inputs = task["inputs"]["parameters"]
    assert inputs["credential_dir"]["runtimeValue"]["constant"] == CREDENTIAL_MOUNT
    assert inputs["client_id"]["componentInputParameter"] == "shard"
    assert inputs["num_clients"]["componentInputParameter"] == "num_shards"


def test_build_functions_take_an_image(tmp_path: Path) -> None:
    image = "registry.example.com/fl:9"
    for build, name in ((build_server_pipeline, "s"), (build_client_pipeline, "c")):
        path = tmp_path / f"{name}.yaml"
        compiler.Compiler().compile(build(image), package_path=str(path))
        spec, _ = yaml.safe_load_all(path.read_text())
        executors = spec["deploymentSpec"]["executors"].values()
        # The importer of an initial model runs KFP's own code, not a container of ours.
        assert {e["container"]["image"] for e in executors if "container" in e} == {image}
