"""The compiled pipeline on the one-node cluster, run by ``kfp_runner`` as KFP would run it.

Each test is one scenario of issue 13 (the default run is checked on the reference run of
tests/e2e/test_cross_namespace.py, ``check_default_run``): two runs at once, the server lost
mid-run (its pod deleted; its process crashing inside the pod) and resumed from a
checkpoint to the same weights as an uninterrupted run, a client lost with a quorum below
N (in async mode: FedBuff's one e2e run), and a service account without the Role of
docs/rbac.md. Pods run the project's image built from images/Dockerfile; the pipeline is
compiled for it by compile.py with resources that fit a 2-CPU node
(``pipeline_env.TEST_RESOURCES``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from fl_kubeflow.kube.credential_secrets import run_credential_secret_name
from fl_kubeflow.kube.naming import service_name
from tests.e2e.kfp_ir import PipelineIR
from tests.e2e.kfp_retry import ERROR, FAILED, SUCCEEDED
from tests.e2e.kfp_runner import RunHandle, RunResult, wait_until
from tests.e2e.pipeline_env import (
    BASE_ARGUMENTS,
    FAULT_TIMEOUT,
    LIMITS,
    SETUP_TIMEOUT,
    CheckpointVolume,
    Env,
    all_pods,
    compile_example_for,
    compile_for,
    create_checkpoint_volume,
    create_service_account,
    history,
    make_env,
    pod_processes,
    server_outputs,
)


@pytest.fixture(scope="module")
def fl_ir(node_cluster, tmp_path_factory) -> PipelineIR:
    return compile_for(node_cluster.image, tmp_path_factory.mktemp("ir") / "fl_pipeline.yaml")


@pytest.fixture
def env(node_cluster, fl_ir) -> Iterator[Env]:
    environment = make_env(node_cluster, fl_ir)
    yield environment
    node_cluster.delete_namespace(environment.namespace)


def _weights(result: RunResult) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    _, model_dir = server_outputs(result)
    return load_file(str(model_dir / "weights.safetensors"))


def test_two_runs_at_once_in_one_namespace_keep_to_their_own_clients(env):
    """Two runs side by side; run b with secure aggregation on (the pipeline parameter
    proven on the node at no extra run: its weights are compared with nothing)."""
    runner = env.runner()
    sizes = {"a": 2, "b": 3}
    secure = {"a": False, "b": True}
    handles = {
        key: runner.start(
            {**BASE_ARGUMENTS, "num_clients": n, "seed": i, "secure_aggregation": secure[key]}
        )
        for i, (key, n) in enumerate(sizes.items())
    }
    results = {key: handle.wait() for key, handle in handles.items()}
    for key, result in results.items():
        assert result.phase == SUCCEEDED, result
        record = history(result)
        ids = [str(i) for i in range(sizes[key])]
        assert record["clients"] == ids, record
        assert [r["contributors"] for r in record["rounds"][1:]] == [ids, ids], record
        reports = [r.get("secure_aggregation") for r in record["rounds"][1:]]
        if secure[key]:
            assert [(r["roster"], r["survivors"], r["revealed"]) for r in reports] == [
                (3, 3, 3),
                (3, 3, 3),
            ], reports
            assert all(r["num_examples"] > 0 for r in record["rounds"][1:]), record
        else:
            assert reports == [None, None], reports
        server_log = result.one("fl-server").logs
        assert f"joined ({sizes[key]}/{sizes[key]})" in server_log
        other = results["b" if key == "a" else "a"]
        for client in result.executed("fl-client"):
            assert service_name(result.run_id) in client.logs
            assert service_name(other.run_id) not in client.logs
        assert env.gone(result.run_id) == {"service": True, "secret": True}


# --- the server lost mid-run, resumed from its checkpoint -------------------------------

RESUME_ARGUMENTS = {**BASE_ARGUMENTS, "num_rounds": 5, "local_epochs": 3}


@dataclass
class ResumeEnv:
    env: Env
    volume: CheckpointVolume
    reference: RunHandle

    def start(self) -> RunHandle:
        return self.env.runner().start({**RESUME_ARGUMENTS, "checkpoint_pvc": self.volume.claim})

    def reached_round(self, handle: RunHandle, number: int) -> dict[str, Any]:
        return wait_until(
            lambda: (
                (state := self.volume.state(handle.run_id))
                and state["completed_round"] >= number
                and state
            ),
            FAULT_TIMEOUT,
            f"run {handle.run_id} to checkpoint round {number}",
            interval=0.2,
        )


@pytest.fixture(scope="module")
def resume_env(node_cluster, fl_ir) -> Iterator[ResumeEnv]:
    """A namespace with a checkpoint claim, and an uninterrupted reference run started."""
    environment = make_env(node_cluster, fl_ir)
    volume = create_checkpoint_volume(
        node_cluster.api_client(),
        environment.namespace,
        node_cluster.hostpath_root / f"pv-{environment.namespace}",
        SETUP_TIMEOUT,
    )
    reference = environment.runner().start({**RESUME_ARGUMENTS, "checkpoint_pvc": volume.claim})
    yield ResumeEnv(environment, volume, reference)
    with contextlib.suppress(Exception):
        reference.abort()
        reference.wait(LIMITS.delete_timeout)
    node_cluster.delete_namespace(environment.namespace)
    with contextlib.suppress(Exception):
        node_cluster.core_v1().delete_persistent_volume(volume.volume)


def _assert_resumed_to_reference(resume: ResumeEnv, result: RunResult, log: str) -> None:
    assert result.phase == SUCCEEDED, result
    rounds = RESUME_ARGUMENTS["num_rounds"]
    resumed = re.search(r"resumed from checkpoint after round (\d+) of (\d+)", log)
    assert resumed, log
    assert 1 <= int(resumed.group(1)) < rounds, "not resumed mid-run: " + resumed.group(0)
    reference = resume.reference.wait()
    assert reference.phase == SUCCEEDED, reference
    record = history(result)
    assert [r["round"] for r in record["rounds"]] == list(range(rounds + 1)), record
    expected, final = _weights(reference), _weights(result)
    assert sorted(final) == sorted(expected)
    for name, value in expected.items():
        assert np.array_equal(final[name], value), name
    assert resume.env.gone(result.run_id) == {"service": True, "secret": True}


def test_server_pod_deleted_mid_run_is_retried_and_resumes_to_the_same_weights(resume_env):
    handle = resume_env.start()
    resume_env.reached_round(handle, 1)
    (pod,) = handle.live_pods("fl-server")
    # As a node loss or an API eviction does: the pod goes, Argo records "Error".
    resume_env.env.cluster.core_v1().delete_namespaced_pod(
        pod, resume_env.env.namespace, grace_period_seconds=0
    )
    result = handle.wait()
    server, _ = server_outputs(result)
    assert server.pod_phases == [ERROR, SUCCEEDED], result
    _assert_resumed_to_reference(resume_env, result, server.attempts[1].log)


# The process e-components' server task serves in (fl_kubeflow/tasks/server_process.py).
SERVER_PROCESS = "-m fl_kubeflow.tasks.server_process"


def test_server_process_crash_inside_its_pod_recovers_there_to_the_same_weights(resume_env):
    handle = resume_env.start()
    resume_env.reached_round(handle, 1)
    (pod,) = handle.live_pods("fl-server")
    core = resume_env.env.cluster.core_v1()
    uid = core.read_namespaced_pod(pod, resume_env.env.namespace).metadata.uid
    (pid,) = pod_processes(uid, SERVER_PROCESS)
    # As the OOM killer or an interpreter crash does. Were the pod's main process to exit
    # non-zero, Argo would call it "Failed", which OnError does not retry.
    os.kill(pid, signal.SIGKILL)
    result = handle.wait()
    server, _ = server_outputs(result)
    assert server.pod_phases == [SUCCEEDED], result
    _assert_resumed_to_reference(resume_env, result, server.logs)


# --- a client lost, the quorum below N ---------------------------------------------------


def test_client_pod_deleted_with_min_clients_below_n_run_completes(env):
    # Rounds of several seconds: with 3 epochs a round took 0.5-0.9 s and all four were
    # over before the pod was deleted (its retry then found the run finished: 409).
    arguments = {
        **BASE_ARGUMENTS,
        "num_clients": 3,
        "min_clients": 2,
        "num_rounds": 4,
        "local_epochs": 40,
        "round_timeout": 30.0,
    }
    handle = env.runner().start(arguments)
    core = env.cluster.core_v1()

    def round_closed() -> str | None:
        for pod in handle.live_pods("fl-server"):
            with contextlib.suppress(Exception):
                if re.search(r"\bround 1/\d+:", core.read_namespaced_pod_log(pod, env.namespace)):
                    return pod
        return None

    wait_until(round_closed, FAULT_TIMEOUT, "the server to close round 1")
    victim = next(p for p in handle.live_pods("fl-client") if "-fl-client-2-" in p)
    core.delete_namespaced_pod(victim, env.namespace, grace_period_seconds=0)
    result = handle.wait()
    assert result.phase == SUCCEEDED, result
    record = history(result)
    assert record["status"] == "finished"
    assert [r["round"] for r in record["rounds"]] == list(range(5)), record
    assert all(len(r["contributors"]) >= 2 for r in record["rounds"][1:]), record
    lost = next(t for t in result.executed("fl-client") if t.iteration == 2)
    assert lost.attempts[0].name == victim and lost.attempts[0].phase == ERROR, result


# --- asynchronous rounds (FedBuff) -------------------------------------------------------


def test_async_run_completes_with_staleness_recorded(env):
    """mode=async (FedBuff) on the real node: 3 clients, buffers of K = 2, so a version is
    made from the first two updates in and the third client's update counts, stale, in a
    later one; the history says so."""
    arguments = {
        **BASE_ARGUMENTS,
        "num_clients": 3,
        "num_rounds": 4,
        "mode": "async",
        "async_options": "buffer_size=2,max_staleness=3",
    }
    result = env.runner().run(arguments)
    assert result.phase == SUCCEEDED, result
    record = history(result)
    assert record["status"] == "finished"
    assert [r["round"] for r in record["rounds"]] == list(range(5)), record
    # The run was asynchronous: its mode and options, and versions, not sampled rounds:
    # each update with the version it started from and its staleness against the newest.
    assert record["mode"] == "async", record
    assert record["async"]["buffer_size"] == 2 and record["async"]["max_staleness"] == 3
    for version in record["rounds"][1:]:
        assert version["sampled"] == [] and len(version["contributors"]) == 2, version
        bases, staleness = version["base_versions"], version["staleness"]
        assert sorted(bases) == sorted(staleness) == version["contributors"], version
        for client_id, base in bases.items():
            assert 0 <= base < version["round"], version
            assert staleness[client_id] == version["round"] - 1 - base, version
    # All three start from version 0 and K = 2: the third update in cannot be in version
    # 1, so it lands in a later version, stale (a run that was synchronous in disguise,
    # every update fresh, fails here).
    assert any(s > 0 for v in record["rounds"][1:] for s in v["staleness"].values()), record


# --- no Role: the permission error, fast, and the cleanup still runs --------------------


def test_without_the_documented_role_the_server_fails_fast_and_cleanup_runs(env):
    account = f"no-role-{uuid.uuid4().hex[:6]}"
    create_service_account(
        env.cluster.api_client(), env.namespace, account, with_role=False, timeout=SETUP_TIMEOUT
    )
    result = env.runner(account).run({**BASE_ARGUMENTS, "join_timeout": 60.0})
    assert result.phase == FAILED, result
    server = result.one("fl-server")
    # A non-zero exit is Argo "Failed", which retryPolicy OnError does not retry.
    assert server.pod_phases == [FAILED] and server.exit_codes[0] != 0, result
    seconds = server.attempts[0].container_seconds
    assert seconds is not None and seconds < 30.0, (seconds, server.logs)
    assert "KubernetesPermissionError" in server.logs and "docs/rbac.md" in server.logs
    cleanup = result.one("fl-cleanup")
    assert cleanup.attempts, result
    others = [a.finished_at for t in result.tasks if t is not cleanup for a in t.attempts]
    assert cleanup.attempts[0].started_at >= max(others)


@pytest.fixture
def user_env(node_cluster, tmp_path_factory) -> Iterator[Env]:
    ir = compile_example_for(node_cluster.image, tmp_path_factory.mktemp("ir") / "user.yaml")
    environment = make_env(node_cluster, ir)
    yield environment
    node_cluster.delete_namespace(environment.namespace)


def test_user_pipeline_with_federated_training_as_one_step(user_env):
    """examples/user_pipeline.py: data step -> federated_training (graph) -> evaluate, the
    clients being examples/user_client.py's component (join_federation with its trainer)."""
    result = user_env.runner().run({"num_clients": 2, "num_rounds": 2})
    assert result.phase == SUCCEEDED, result
    clients = result.executed("fl-client")
    assert {t.task for t in clients} == {"my-client"}, result
    assert all(t.outputs.artifacts["metrics"]["metadata"]["rounds_trained"] == 2 for t in clients)
    assert sorted(name for name, _ in all_pods(result)) == [
        "client-ids",
        "evaluate",
        "fl-client",
        "fl-client",
        "fl-server",
        "held-out-test-set",
    ], result
    # The graph's output is the server's trained_model, through dsl.OneOf of the branch ran.
    server, model_dir = server_outputs(result)
    (graph,) = [t for t in result.tasks if t.kind == "dag" and t.task == "federated-training"]
    trained = server.outputs.artifacts["trained_model"]["uri"]
    assert graph.outputs.artifacts["trained_model"]["uri"] == trained, result
    evaluation = result.one("evaluate")
    given = evaluation.executor_input["inputs"]["artifacts"]["trained_model"]["artifacts"][0]
    assert given["uri"] == trained and (model_dir / "model.keras").is_file()
    # The held-out set is the union of the clients' local test splits, so the evaluation
    # step's accuracy is the server's final federated evaluation of the same model.
    accuracy = evaluation.outputs.parameters["Output"]
    federated = server.outputs.artifacts["metrics"]["metadata"]["accuracy"]
    assert accuracy > 0.5 and abs(accuracy - federated) < 0.01, (accuracy, federated)
    metrics = evaluation.outputs.artifacts["metrics"]["metadata"]
    assert metrics["accuracy"] == accuracy and metrics["examples"] > 0, metrics
    # No exit handler in the graph: the server deleted its Service itself; a credential Secret
    # is owned by the server pod and goes with it (KFP deletes a run's pods with the run).
    assert user_env.gone(result.run_id) == {"service": True, "secret": False}
    core = user_env.cluster.core_v1()
    secret = core.read_namespaced_secret(
        run_credential_secret_name(result.run_id, "0"), user_env.namespace
    )
    pod = core.read_namespaced_pod(server.pod_names[-1], user_env.namespace)
    owners = [(o.kind, o.uid) for o in secret.metadata.owner_references or []]
    assert owners == [("Pod", pod.metadata.uid)], owners
    core.delete_namespaced_pod(pod.metadata.name, user_env.namespace, grace_period_seconds=0)
    wait_until(
        lambda: user_env.gone(result.run_id)["secret"],
        SETUP_TIMEOUT,
        "the garbage collector to delete the credential Secret with the server pod",
    )
