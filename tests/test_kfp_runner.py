"""The e2e runner's driver/launcher side, checked against the committed IR without a cluster.

The ``client-ids`` task runs for real here: its ExecutorInput built from
``fl_pipeline.yaml``, its command and args from the IR, KFP's own ``executor_main`` in this
venv. The pods the runner would create are compared with what the IR asks for.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.e2e.kfp_inputs import (
    RunInfo,
    TaskOutputs,
    evaluate_condition,
    executor_output_parameters,
    importer_output,
    pipeline_arguments,
    placeholders,
)
from tests.e2e.kfp_ir import PipelineIR, protojson_number
from tests.e2e.kfp_plan import ContainerPlan, descend
from tests.e2e.kfp_pods import PodPlacement
from tests.e2e.kfp_retry import ERROR, FAILED, Attempt, RetryStrategy, decide

REPO = Path(__file__).resolve().parents[1]
IR_PATH = REPO / "fl_pipeline.yaml"
SERVER_WITH_CHECKPOINTS = [
    "exit-handler-1",
    "condition-branches-2",
    "condition-7",
    "condition-branches-8",
    "condition-9",
    "fl-server-3",
]
PLACEMENT = PodPlacement(namespace="ns1", service_account="runner", store_host_path="/srv/store")


@pytest.fixture(scope="module")
def ir() -> PipelineIR:
    return PipelineIR.load(IR_PATH)


def _run(ir: PipelineIR, root: str = "minio://mlpipeline/v2/artifacts") -> RunInfo:
    return RunInfo(str(uuid.uuid4()), "offline", ir.name, root)


def _plan(ir: PipelineIR, run: RunInfo, arguments: dict, path: list) -> ContainerPlan:
    name, task, inputs, parent = descend(ir, pipeline_arguments(ir.root, arguments), path, run)
    iteration = path[-2] if len(path) > 1 and isinstance(path[-2], int) else None
    return ContainerPlan.make(ir, name, task, inputs, parent, run, iteration=iteration)


def _quantity(field: object, values: dict) -> object:
    # A resource the IR gives as a pipeline parameter is that parameter's value.
    match = re.fullmatch(r"\{\{\$\.inputs\.parameters\['(.+)'\]\}\}", str(field))
    return values[match.group(1)] if match else field


def _env(pod: dict) -> dict[str, dict]:
    return {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize(("arguments", "expected"), [({}, [0, 1, 2]), ({"num_clients": 2}, [0, 1])])
def test_client_ids_runs_its_ir_command_under_kfps_executor(ir, tmp_path, arguments, expected):
    run = _run(ir, root=str(tmp_path / "root"))
    plan = _plan(ir, run, arguments, ["exit-handler-1", "client-ids"])
    # The IR's default 3.0 and the argument 2 both arrive as JSON integers, as protojson writes.
    sent = plan.executor_input["inputs"]["parameterValues"]
    assert sent == {"num_clients": expected[-1] + 1}
    assert type(sent["num_clients"]) is int
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [*plan.command, *plan.args], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    output_file = Path(plan.outputs["outputFile"])
    assert output_file.parent.parent.parent == tmp_path / "root" / ir.name / run.run_id
    output = json.loads(output_file.read_text())
    assert executor_output_parameters(output, plan.component) == {"Output": expected}


def test_the_server_with_checkpoints_is_the_branch_taken_and_its_pod_matches_the_ir(ir):
    run = _run(ir)
    arguments = {"num_clients": 2, "checkpoint_pvc": "fl-ckpt"}
    scope = pipeline_arguments(ir.root, arguments)
    taken = {}
    for branch in ("condition-6", "condition-7"):
        _, task, inputs, _ = descend(ir, scope, [*SERVER_WITH_CHECKPOINTS[:2], branch], run)
        taken[branch] = evaluate_condition(task["triggerPolicy"]["condition"], inputs.parameters)
    for branch in ("condition-9", "condition-10"):
        _, task, inputs, _ = descend(ir, scope, [*SERVER_WITH_CHECKPOINTS[:4], branch], run)
        taken[branch] = evaluate_condition(task["triggerPolicy"]["condition"], inputs.parameters)
    assert taken == {
        "condition-6": False,
        "condition-7": True,
        "condition-9": True,
        "condition-10": False,
    }

    plan = _plan(ir, run, arguments, SERVER_WITH_CHECKPOINTS)
    values = plan.executor_input["inputs"]["parameterValues"]
    assert values["run_id"] == run.run_id
    assert values["port"] == 8080 and type(values["port"]) is int
    assert values["checkpoint_dir"] == "/fl-checkpoint"
    assert values["num_clients"] == 2
    root = f"minio://mlpipeline/v2/artifacts/{ir.name}/{run.run_id}/fl-server-3/"
    uris = {k: v["artifacts"][0]["uri"] for k, v in plan.outputs["artifacts"].items()}
    assert set(uris) == {"trained_model", "metrics", "report", "summary"}
    assert all(u.startswith(root) and u.endswith("/" + k) for k, u in uris.items())
    assert plan.outputs["outputFile"].startswith("/minio/" + root.removeprefix("minio://"))
    # {{$}} became this very ExecutorInput; as in the launcher, the other placeholders are
    # then substituted inside it too (the resource inputs the SDK adds as constants).
    sent = json.loads(plan.args[plan.args.index("--executor_input") + 1])
    table = placeholders(plan.executor_input)
    expected = json.loads(json.dumps(plan.executor_input))
    for name, value in expected["inputs"]["parameterValues"].items():
        if isinstance(value, str) and value in table:
            expected["inputs"]["parameterValues"][name] = table[value]
    assert sent == expected

    pod = plan.pod(PLACEMENT)
    assert pod["metadata"]["labels"]["pipeline/runid"] == run.run_id
    assert pod["metadata"]["labels"]["fl-kubeflow/role"] == "server"
    assert pod["spec"]["serviceAccountName"] == "runner"
    assert pod["spec"]["restartPolicy"] == "Never"
    env = _env(pod)
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["KFP_POD_UID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.uid"
    assert env["KFP_RETRY_INDEX"]["value"] == "0"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["fl-ckpt"]["persistentVolumeClaim"] == {"claimName": "fl-ckpt"}
    mounts = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["fl-ckpt"] == "/fl-checkpoint"
    assert mounts["kfp-artifact-store"] == "/minio"
    spec = {k: _quantity(v, values) for k, v in plan.container["resources"].items()}
    assert pod["spec"]["containers"][0]["resources"] == {
        "limits": {"cpu": spec["resourceCpuLimit"], "memory": spec["resourceMemoryLimit"]},
        "requests": {"cpu": spec["resourceCpuRequest"], "memory": spec["resourceMemoryRequest"]},
    }
    assert pod["spec"]["containers"][0]["image"] == plan.container["image"]
    # set_retry merged into Argo's template defaults: its limit and backoff, OnError.
    policy = plan.task["retryPolicy"]
    assert plan.retry == RetryStrategy(
        limit=policy["maxRetryCount"],
        policy="OnError",
        backoff_duration=float(policy["backoffDuration"].removesuffix("s")),
        backoff_factor=policy["backoffFactor"],
        backoff_max_duration=float(policy["backoffMaxDuration"].removesuffix("s")),
    )
    assert "activeDeadlineSeconds" not in pod["spec"]
    retry = plan.pod(PLACEMENT, attempt=1, active_deadline_seconds=120)
    assert retry["spec"]["activeDeadlineSeconds"] == 120
    assert _env(retry)["KFP_RETRY_INDEX"]["value"] == "1"
    assert retry["metadata"]["name"] != pod["metadata"]["name"]


def test_with_an_initial_model_the_importer_feeds_the_server_its_artifact(ir):
    run = _run(ir)
    uri = f"minio://mlpipeline/v2/artifacts/{ir.name}/{uuid.uuid4()}/fl-server-3/x/trained_model"
    scope = pipeline_arguments(ir.root, {"initial_model_uri": uri})
    branch = ["exit-handler-1", "condition-branches-2", "condition-6"]
    _, task, inputs, _ = descend(ir, scope, branch, run)
    assert evaluate_condition(task["triggerPolicy"]["condition"], inputs.parameters)
    _, importer_task, importer_inputs, _ = descend(ir, scope, [*branch, "importer"], run)
    executor = ir.executor(ir.component(importer_task["componentRef"]["name"])["executorLabel"])
    produced = {
        "importer": TaskOutputs(
            artifacts={"artifact": importer_output(executor["importer"], importer_inputs)}
        )
    }
    path = [*branch, "condition-branches-3", "condition-5", "fl-server-2"]
    name, server, inputs, parent = descend(ir, scope, path, run, produced)
    plan = ContainerPlan.make(ir, name, server, inputs, parent, run)
    (artifact,) = plan.executor_input["inputs"]["artifacts"]["initial_model"]["artifacts"]
    assert artifact["uri"] == uri and artifact["type"]["schemaTitle"] == "system.Model"
    # KFP's executor gives the component this path: the store's hostPath in the e2e pods.
    from kfp.dsl import Model

    assert Model(uri=uri).path == "/minio/" + uri.removeprefix("minio://")


def test_a_client_gets_its_loop_item_and_the_default_retry_strategy(ir):
    run = _run(ir)
    plan = _plan(ir, run, {"num_clients": 2}, ["exit-handler-1", "for-loop-11", 1, "fl-client"])
    values = plan.executor_input["inputs"]["parameterValues"]
    assert values["client_id"] == 1 and type(values["client_id"]) is int
    assert values["run_id"] == run.run_id
    assert values["round_wait_timeout"] == 3600  # a default the launcher adds
    pod = plan.pod(PLACEMENT)
    assert pod["metadata"]["labels"]["fl-kubeflow/role"] == "client"
    assert "KFP_RETRY_INDEX" not in _env(pod)
    assert not any("persistentVolumeClaim" in v for v in pod["spec"]["volumes"])
    assert plan.retry == RetryStrategy(limit=2, policy="OnError")


def test_cleanup_runs_after_the_group_whatever_happened(ir):
    run = _run(ir)
    plan = _plan(ir, run, {}, ["fl-cleanup"])
    assert plan.task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert plan.task["dependentTasks"] == ["exit-handler-1"]
    # The clients' credential Secrets fl-<run>-cred-0..N-1 go too.
    assert plan.executor_input["inputs"]["parameterValues"] == {
        "run_id": run.run_id,
        "num_clients": 3,
        "service_name": "",
    }


def test_numbers_and_placeholders_are_written_as_the_launcher_writes_them():
    assert protojson_number(8080.0) == 8080 and type(protojson_number(8080.0)) is int
    assert protojson_number(0.05) == 0.05
    assert type(protojson_number(1e21)) is float
    table = placeholders({"inputs": {"parameterValues": {"port": 8080, "lr": 0.05, "s": "x"}}})
    assert table["{{$.inputs.parameters['port']}}"] == "8080"
    assert table["{{$.inputs.parameters['lr']}}"] == "0.05"
    assert table["{{$.inputs.parameters['s']}}"] == "x"


def test_argo_retry_decisions_under_kfp_defaults():
    server = RetryStrategy.for_task(
        {
            "maxRetryCount": 3,
            "backoffDuration": "10s",
            "backoffFactor": 2.0,
            "backoffMaxDuration": "100s",
        }
    )
    # A non-zero exit is "Failed": OnError does not retry it.
    assert not decide(server, [Attempt(FAILED, 0.0, 5.0)], 6.0).retry
    first = decide(server, [Attempt(ERROR, 0.0, 5.0)], 6.0)
    assert first.retry and first.start_at == 15.0 and first.deadline == 100.0
    second = decide(server, [Attempt(ERROR, 0.0, 5.0), Attempt(ERROR, 15.0, 30.0)], 31.0)
    assert second.retry and second.start_at == 50.0
    # The third backoff (40 s) would end past the max duration, counted from the first start.
    late = [Attempt(ERROR, 0.0, 5.0), Attempt(ERROR, 15.0, 30.0), Attempt(ERROR, 50.0, 70.0)]
    assert decide(server, late, 71.0).reason == "Backoff would exceed max duration limit"
    assert decide(server, [Attempt(ERROR, 0.0, 101.0)], 101.5).reason.startswith("Max duration")
    # Without set_retry: Argo's defaults, limit 2, no backoff.
    default = RetryStrategy.for_task(None)
    assert decide(default, [Attempt(ERROR, 0.0, 5.0)], 5.0).start_at == 5.0
    three = [Attempt(ERROR, 0.0, 1.0)] * 3
    assert decide(default, three, 2.0).reason == "No more retries left"
    assert not decide(default, [Attempt(FAILED, 0.0, 1.0)], 2.0).retry
