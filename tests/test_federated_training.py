"""The federated_training graph component, user client components, and the user example.

Compiled with KFP's own compiler, checked in the IR: the graph returns the server's
outputs through ``dsl.OneOf`` with no exit handler inside, a user's pipeline feeds them to
its next step, and a client component is checked against the contract at build time.
No ``from __future__ import annotations``: KFP reads the components' annotations as objects.
"""

from pathlib import Path
from typing import Any

import pytest
import yaml
from fl_kubeflow_kfp.pipeline import (
    CLIENT_CONTRACT,
    build_federated_training,
    build_pipeline,
    federated_training,
)
from fl_kubeflow_kfp.pipeline.suite import component_specs, write_component_files
from kfp import compiler, components, dsl
from kfp.dsl import Input, Model

from tests.examples import load_example

IMAGE = "registry.example.com/fl-kubeflow:test"


def _compile(pipeline: Any, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    compiler.Compiler().compile(pipeline, package_path=str(path))
    spec, platform = (d for d in yaml.safe_load_all(path.read_text()) if d)
    return spec, platform


def _graph(spec: dict[str, Any]) -> dict[str, Any]:
    """The graph component's own DAG (the root of its compiled package)."""
    return spec["root"]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def short_client(run_id: str, client_id: str, server_address: str, data_uri: str):
    """A client that lacks inputs, has one of the wrong type and requires one of its own."""


def test_graph_returns_the_servers_outputs_through_one_of(tmp_path: Path) -> None:
    spec, platform = _compile(federated_training, tmp_path / "graph.yaml")
    root = _graph(spec)
    outputs = root["dag"]["outputs"]["artifacts"]
    assert set(outputs) == {"trained_model", "metrics"}
    branches = outputs["trained_model"]["artifactSelectors"][0]["producerSubtask"]
    oneof = spec["components"][root["dag"]["tasks"][branches]["componentRef"]["name"]]
    (selected,) = [
        o["artifactSelectors"]
        for o in oneof["dag"]["outputs"]["artifacts"].values()
        if "trained_model" in o["artifactSelectors"][0]["outputArtifactKey"]
    ]
    # One selector per branch: with and without checkpoints; exactly one runs.
    conditions = {
        oneof["dag"]["tasks"][s["producerSubtask"]]["triggerPolicy"]["condition"] for s in selected
    }
    assert len(selected) == 2 and len(conditions) == 2, selected
    assert all("checkpoint_pvc" in c for c in conditions)
    # No exit handler inside (KFP cannot return outputs from one): no exit task anywhere.
    text = (tmp_path / "graph.yaml").read_text()
    assert "ALL_UPSTREAM_TASKS_COMPLETED" not in text and "fl-cleanup" not in text
    # The clients and the server labels and namespace env are those of fl_pipeline.
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    labels = sorted(e["podMetadata"]["labels"]["fl-kubeflow/role"] for e in executors.values())
    assert labels == ["client", "server", "server"] and all(
        e["fieldPathAsEnv"][0]["name"] == "POD_NAMESPACE" for e in executors.values()
    )
    inputs = root["inputDefinitions"]["parameters"]
    assert "initial_model_uri" not in inputs and inputs["num_clients"]["description"]
    assert all(p.get("description") for p in inputs.values())


def test_initial_model_variant_takes_a_required_model_input(tmp_path: Path) -> None:
    spec, _ = _compile(build_federated_training(IMAGE, initial_model=True), tmp_path / "g.yaml")
    artifact = _graph(spec)["inputDefinitions"]["artifacts"]["initial_model"]
    assert artifact["artifactType"]["schemaTitle"] == "system.Model"
    assert not artifact.get("isOptional"), artifact
    assert spec["pipelineInfo"]["name"] == "federated-training-from-model"


def test_graph_yaml_loads_and_feeds_a_users_next_step(tmp_path: Path) -> None:
    graphs = {k: v for k, v in component_specs(IMAGE).items() if k.startswith("federated_")}
    assert sorted(graphs) == ["federated_training", "federated_training_from_model"]
    write_component_files(tmp_path, graphs)
    loaded = components.load_component_from_file(str(tmp_path / "federated_training.yaml"))
    from_model = components.load_component_from_file(
        str(tmp_path / "federated_training_from_model.yaml")
    )

    @dsl.component(base_image=IMAGE)
    def consume(model: Input[Model]):
        """Read the model."""

    @dsl.pipeline(name="mine")
    def mine(n: int = 2):
        first = loaded(num_clients=n, num_rounds=1)
        second = from_model(initial_model=first.outputs["trained_model"], num_clients=n)
        consume(model=second.outputs["trained_model"])

    spec, _ = _compile(mine, tmp_path / "mine.yaml")
    tasks = spec["root"]["dag"]["tasks"]
    (source,) = [t for t in tasks.values() if t["taskInfo"]["name"] == "consume"]
    assert source["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"]


@pytest.mark.parametrize("builder", [build_pipeline, build_federated_training])
def test_user_client_component_replaces_the_builtin_client(builder: Any, tmp_path: Path) -> None:
    user_client = load_example("user_client").build_client(IMAGE)
    spec, platform = _compile(builder(IMAGE, client_component=user_client), tmp_path / "p.yaml")
    assert "comp-my-client" in spec["components"] and "comp-fl-client" not in spec["components"]
    (loop,) = [
        c for c in spec["components"].values() if "my-client" in c.get("dag", {}).get("tasks", {})
    ]
    task = loop["dag"]["tasks"]["my-client"]
    assert set(task["inputs"]["parameters"]) >= set(CLIENT_CONTRACT)
    assert "dataset" not in task["inputs"]["parameters"] and task["cachingOptions"] == {}
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-my-client"]["podMetadata"]["labels"] == {"fl-kubeflow/role": "client"}


@pytest.mark.parametrize("builder", [build_pipeline, build_federated_training])
def test_a_client_component_off_the_contract_is_refused_naming_the_problems(builder: Any) -> None:
    with pytest.raises(ValueError) as raised:
        builder(IMAGE, client_component=short_client)
    message = str(raised.value)
    assert "'short-client'" in message
    assert "lacks the inputs num_clients, port, retry_timeout" in message
    assert "client_id is String, not Integer" in message
    assert "requires inputs the pipeline does not pass: data_uri" in message
    with pytest.raises(TypeError, match="must be a KFP component"):
        builder(IMAGE, client_component=lambda **kwargs: None)


def test_user_pipeline_example_compiles_with_training_as_one_step(tmp_path: Path) -> None:
    example = load_example("user_pipeline")
    assert example.main(["--image", IMAGE, "--output", str(tmp_path / "user.yaml")]) == 0
    text = (tmp_path / "user.yaml").read_text()
    spec = next(d for d in yaml.safe_load_all(text) if d)
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"held-out-test-set", "federated-training", "evaluate"}
    inputs = tasks["evaluate"]["inputs"]["artifacts"]
    assert inputs["trained_model"]["taskOutputArtifact"] == {
        "outputArtifactKey": "trained_model",
        "producerTask": "federated-training",
    }
    assert inputs["test_set"]["taskOutputArtifact"]["producerTask"] == "held-out-test-set"
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {IMAGE}


def test_user_client_example_compiles_into_the_user_pipeline(tmp_path: Path) -> None:
    example = load_example("user_client")
    assert example.main(["--image", IMAGE, "--output", str(tmp_path / "uc.yaml")]) == 0
    spec = next(d for d in yaml.safe_load_all((tmp_path / "uc.yaml").read_text()) if d)
    assert "comp-my-client" in spec["components"] and "comp-fl-client" not in spec["components"]
    source = spec["deploymentSpec"]["executors"]["exec-my-client"]["container"]["command"][-1]
    assert "join_federation(" in source
