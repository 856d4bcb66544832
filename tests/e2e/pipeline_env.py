"""What the pipeline scenarios need on the node cluster besides the runner.

The limits and base arguments of a run, a namespace with its artifact store and service
account (``make_env``), the pipeline compiled for the test image with small pod resources
(``compile.py``, as a user compiles it), the service account the run's pods use with the Role of
``docs/rbac.md`` (read from that file, so the documented Role is the one tested), a
hostPath PersistentVolume + claim for checkpoints, the artifact store folder, and readers
for a finished run's outputs.
"""

from __future__ import annotations

import html.parser
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from fl_kubeflow_kfp.pipeline.resources import FIELDS, PodResources

from fl_kubeflow.kube.credential_secrets import run_credential_secret_name
from fl_kubeflow.kube.naming import service_name
from tests.e2e.kfp_ir import PipelineIR
from tests.e2e.kfp_pods import PodPlacement
from tests.e2e.kfp_retry import SUCCEEDED
from tests.e2e.kfp_runner import KfpRunner, RunnerLimits, RunResult, TaskRun, wait_until

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

REPO = Path(__file__).resolve().parents[2]
RBAC_DOC = REPO / "docs" / "rbac.md"
RUNNER_ACCOUNT = "fl-pipeline-runner"

# Small enough that two runs of N=2 (or one of N=3) fit a 2-CPU node at once, as requests;
# the limits let a pod burst while the node is idle.
TEST_RESOURCES = {
    "server-cpu-request": "100m",
    "server-cpu-limit": "1",
    "server-memory-request": "256Mi",
    "server-memory-limit": "2Gi",
    "client-cpu-request": "200m",
    "client-cpu-limit": "1",
    "client-memory-request": "384Mi",
    "client-memory-limit": "3Gi",
}


# A run here takes about a minute; these bound a stuck one with room for a loaded machine.
LIMITS = RunnerLimits(run_timeout=900.0, pending_timeout=300.0, poll_interval=0.5)
SETUP_TIMEOUT = 120.0  # service account tokens, PVC binding
FAULT_TIMEOUT = 600.0  # until the run reaches the point where the test injects a fault
BASE_ARGUMENTS: dict[str, Any] = {
    "num_clients": 2,
    "num_rounds": 2,
    "dataset": "digits",
    "seed": 0,
    # Pods of a busy node may take a while to start; nothing waits this long when healthy.
    "join_timeout": 600.0,
    "round_timeout": 300.0,
}


@dataclass
class Env:
    """A namespace with an artifact store, its runs' service account, and a runner factory."""

    cluster: Any
    namespace: str
    ir: PipelineIR
    store: Path
    account: str = RUNNER_ACCOUNT

    def runner(self, service_account: str | None = None) -> KfpRunner:
        account = service_account or self.account
        placement = PodPlacement(self.namespace, account, str(self.store))
        return KfpRunner(self.ir, self.cluster.core_v1(), placement, limits=LIMITS)

    def gone(self, run_id: str) -> dict[str, bool]:
        """Whether the run's Service and its first client's credential Secret no longer exist."""
        from kubernetes.client.rest import ApiException

        core = self.cluster.core_v1()
        found = {}
        for kind, read, name in (
            ("service", core.read_namespaced_service, service_name(run_id)),
            ("secret", core.read_namespaced_secret, run_credential_secret_name(run_id, "0")),
        ):
            try:
                read(name, self.namespace)
                found[kind] = False
            except ApiException as exc:
                if exc.status != 404:
                    raise
                found[kind] = True
        return found


def small_pod_resources() -> tuple[PodResources, PodResources]:
    """TEST_RESOURCES as the (server, client) PodResources a pipeline builder takes."""
    return tuple(  # type: ignore[return-value]
        PodResources(
            **{name: TEST_RESOURCES[f"{role}-{name.replace('_', '-')}"] for name in FIELDS}
        )
        for role in ("server", "client")
    )


def compile_example_for(image: str, output: Path) -> PipelineIR:
    """examples/user_pipeline.py with examples/user_client.py's client, built for ``image``
    with the small resources; its IR."""
    from kfp import compiler

    from tests.examples import load_example

    client = load_example("user_client").build_client(image)
    pipeline = load_example("user_pipeline").build_user_pipeline(
        image, *small_pod_resources(), client_component=client
    )
    compiler.Compiler().compile(pipeline, package_path=str(output))
    return PipelineIR.load(output)


def compile_for(image: str, output: Path) -> PipelineIR:
    """``python compile.py --image IMAGE`` with the small resources above; the IR it wrote."""
    flags = [f"--{name}={value}" for name, value in TEST_RESOURCES.items()]
    command = [sys.executable, str(REPO / "compile.py"), "--image", image, "--output", str(output)]
    subprocess.run(
        [*command, *flags],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return PipelineIR.load(output)


def documented_rbac(namespace: str, service_account: str) -> list[dict[str, Any]]:
    """The Role + RoleBinding YAML block of docs/rbac.md, for this namespace and account."""
    text = RBAC_DOC.read_text()
    section = text[text.index("## Ready Role + RoleBinding") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    if block is None:
        raise ValueError(f"{RBAC_DOC}: no YAML block under 'Ready Role + RoleBinding'")
    documents = list(yaml.safe_load_all(block.group(1).replace("NAMESPACE", namespace)))
    for document in documents:
        if document["kind"] == "RoleBinding":
            for subject in document["subjects"]:
                subject["name"] = service_account
    return documents


def create_service_account(
    api_client: ApiClient, namespace: str, name: str, *, with_role: bool, timeout: float
) -> None:
    """A service account, bound to docs/rbac.md's Role or to nothing, ready for pods."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    if with_role:
        rbac = client.RbacAuthorizationV1Api(api_client)
        for document in documented_rbac(namespace, name):
            if document["kind"] == "Role":
                rbac.create_namespaced_role(namespace, document)
            else:
                rbac.create_namespaced_role_binding(namespace, document)
    # API 1.20 refuses pods until the token controller gave the account its Secret.
    wait_until(
        lambda: core.read_namespaced_service_account(name, namespace).secrets,
        timeout,
        f"a token for service account {namespace}/{name}",
    )


def make_env(
    cluster: Any,
    ir: PipelineIR,
    prefix: str = "fl",
    *,
    account: str = RUNNER_ACCOUNT,
    with_role: bool = True,
) -> Env:
    """A fresh namespace with an artifact store and ``account`` (docs/rbac.md's Role or none)."""
    namespace = cluster.create_namespace(prefix)
    store = cluster.hostpath_root / f"store-{namespace}"
    store.mkdir()
    store.chmod(0o1777)  # pods run as the image's non-root user
    create_service_account(
        cluster.api_client(), namespace, account, with_role=with_role, timeout=SETUP_TIMEOUT
    )
    return Env(cluster, namespace, ir, store, account)


@dataclass(frozen=True)
class CheckpointVolume:
    """A hostPath PersistentVolume bound to a claim in the test's namespace."""

    claim: str
    volume: str
    host_dir: Path

    def state(self, run_id: str) -> dict[str, Any] | None:
        """The server's checkpoint state for ``run_id`` (``state.json``), if written yet."""
        path = self.host_dir / run_id / "state.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # not there yet, or caught between the atomic rename's two states


def create_checkpoint_volume(
    api_client: ApiClient, namespace: str, host_dir: Path, timeout: float
) -> CheckpointVolume:
    """A PV on ``host_dir`` (the node is this machine) and a claim bound to it."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    host_dir.mkdir(parents=True)
    host_dir.chmod(0o1777)  # the image runs as a non-root user
    volume = f"fl-ckpt-{namespace}"
    storage_class = f"manual-{namespace}"  # nothing else may bind to it
    core.create_persistent_volume(
        {
            "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": storage_class,
                "hostPath": {"path": str(host_dir), "type": "Directory"},
            },
        }
    )
    claim = "fl-checkpoints"
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": claim},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": storage_class,
                "volumeName": volume,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    wait_until(
        lambda: (
            core.read_namespaced_persistent_volume_claim(claim, namespace).status.phase == "Bound"
        ),
        timeout,
        f"claim {claim} to bind",
    )
    return CheckpointVolume(claim=claim, volume=volume, host_dir=host_dir)


def server_outputs(result: RunResult) -> tuple[TaskRun, Path]:
    """The run's server task and its ``trained_model`` folder on the node."""
    server = result.one("fl-server")
    return server, result.artifact_path(server, "trained_model")


def history(result: RunResult) -> dict[str, Any]:
    """The server's ``history.json`` (in ``trained_model``)."""
    _, model_dir = server_outputs(result)
    return json.loads((model_dir / "history.json").read_text())


def pod_processes(pod_uid: str, needle: str, proc: Path = Path("/proc")) -> list[int]:
    """PIDs (on the node: this machine) of the pod's processes whose command line has ``needle``.

    kubelet puts every container of a pod in a cgroup under ``pod<uid>``, so the node's
    ``/proc/<pid>/cgroup`` says which pod a process belongs to.
    """
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cgroup = (entry / "cgroup").read_text()
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        if needle in cmdline and f"pod{pod_uid}" in cgroup:
            found.append(int(entry.name))
    return found


def all_pods(result: RunResult) -> list[tuple[str, str]]:
    return [(t.display_name, a.phase) for t in result.tasks for a in t.attempts]


class _TagParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)


def check_default_run(env: Env, result: RunResult) -> None:
    """What a run of the default pipeline with BASE_ARGUMENTS must give: its five pods, the
    cleanup last, a model that predicts digits, metrics, the HTML report, the
    history, and the run's Service and credential Secret gone."""
    assert result.phase == SUCCEEDED, result
    pods = all_pods(result)
    assert sorted(name for name, _ in pods) == [
        "client-ids",
        "fl-cleanup",
        "fl-client",
        "fl-client",
        "fl-server",
    ], result
    assert all(phase == SUCCEEDED for _, phase in pods), result
    cleanup = result.one("fl-cleanup")
    others = [a.finished_at for t in result.tasks if t is not cleanup for a in t.attempts]
    assert cleanup.attempts[0].started_at >= max(others)

    import keras

    from fl_kubeflow.training.datasets import load_client_data

    server, model_dir = server_outputs(result)
    model = keras.models.load_model(model_dir / "model.keras")
    data = load_client_data("digits", 0, 2)
    predictions = model.predict(data.x_test, verbose=0)
    assert predictions.shape == (len(data.x_test), data.num_classes)
    accuracy = float(np.mean(predictions.argmax(axis=1) == data.y_test))
    assert accuracy > 0.5, accuracy  # two FedAvg rounds of the 2NN on digits reach ~0.9

    metrics = server.outputs.artifacts["metrics"]["metadata"]
    assert metrics["rounds"] == 2 and metrics["clients"] == 2, metrics
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0.0, metrics
    report = result.artifact_path(server, "report").read_text()
    parser = _TagParser()
    parser.feed(report)
    parser.close()
    assert {"html", "table"} <= set(parser.tags), parser.tags
    assert "accuracy" in report
    assert history(result)["status"] == "finished"
    assert env.gone(result.run_id) == {"service": True, "secret": True}
