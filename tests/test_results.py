"""A run's results found through kfp.Client and downloaded from a real S3 store on loopback.

The artifact store is SeaweedFS's S3 gateway (``tests/s3_server.py``), holding the real
outputs of a federation (a server and two numpy clients on loopback) where KFP 2.17's
driver would put them. No KFP backend runs here: the KFP API is a loopback HTTP server
answering with JSON shaped as the 2.17 backend returns it (``V2beta1Run`` with the run's
pipeline spec as kfp.Client uploads it, and ``task_details`` built from Argo nodes, which
carry no artifacts), read by the real ``kfp.Client`` and its ``kfp_server_api`` models.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fl_kubeflow.kube.permissions import KubernetesPermissionError
from fl_kubeflow.tasks.server_task import history_metrics
from fl_kubeflow_kfp import compile_pipeline
from fl_kubeflow_kfp.artifact_store import DEFAULT_SECRET, ArtifactStore, ArtifactStoreError
from fl_kubeflow_kfp.results import RunResults, fetch_run_results
from fl_kubeflow_kfp.run_artifacts import (
    DEFAULT_PIPELINE_ROOT,
    LAUNCHER_CONFIG,
    LAUNCHER_ROOT_KEY,
    RunArtifactsError,
    default_pipeline_root,
    find_output_uri,
    task_names,
)
from tests.fl_processes import start_delta_clients, start_server, wait_all
from tests.k8s_cluster import K8sCluster  # the k8s_cluster fixture comes from conftest.py
from tests.s3_server import S3Server, s3_server  # noqa: F401  (pytest fixture)
from tests.test_kube_service import grant

KFP_BUCKET = "mlpipeline"  # KFP's default pipeline root: minio://mlpipeline/v2/artifacts
PIPELINE_ID = "0b7e4f4c-6a55-4a4f-8d55-0c1f2b7a9e10"
VERSION_ID = "5d6c3a1e-2f41-4d1b-9c1e-7a8b9c0d1e2f"


class CannedKfpApi:
    """KFP's REST API for a few runs and pipeline versions, from stored JSON documents."""

    def __init__(self) -> None:
        self.documents: dict[str, Any] = {"/apis/v2beta1/healthz": {"multi_user": False}}
        self.requests: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.requests.append(self.path)
                document = api.documents.get(self.path.split("?")[0])
                body = json.dumps(document or {"error": "not found", "code": 5}).encode()
                self.send_response(200 if document is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def client(self) -> Any:
        import kfp

        return kfp.Client(host=self.url)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def kfp_api() -> Iterator[CannedKfpApi]:
    api = CannedKfpApi()
    yield api
    api.close()


@pytest.fixture(scope="module")
def compiled_spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The suite's pipeline as kfp.Client uploads it: pipeline spec and platform spec."""
    path = compile_pipeline(tmp_path_factory.mktemp("spec") / "fl_pipeline.yaml")
    pipeline_spec, platform_spec = yaml.safe_load_all(path.read_text())
    return {"pipeline_spec": pipeline_spec, "platform_spec": platform_spec}


@pytest.fixture(scope="module")
def federation_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of a real two-round federation: history.json, weights.safetensors."""
    folder = tmp_path_factory.mktemp("federation")
    server = start_server(folder, "--clients", "2", "--rounds", "2")
    clients = start_delta_clients(folder, server.url, [0.5, 1.0], [1, 3])
    assert wait_all(clients) == [0, 0], [c.log() for c in clients]
    assert server.wait() == 0, server.log()
    return server.output


def _store(server: S3Server, secret: str | None = None) -> ArtifactStore:
    return ArtifactStore(server.endpoint, server.access_key, secret or server.secret_key)


def _upload(server: S3Server, folder: Path, prefix: str) -> None:
    fs = server.filesystem()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{prefix}/{path.relative_to(folder).as_posix()}")


def _run_document(run_id: str, state: str, spec: dict[str, Any] | None, root: str = "") -> dict:
    """A run as the 2.17 API server answers GET /apis/v2beta1/runs/{id}."""
    stamp = "2026-12-01T12:00:00Z"
    node = {
        "run_id": run_id,
        "display_name": "fl-server",
        "create_time": stamp,
        "start_time": stamp,
        "end_time": stamp,
        "state": state,
        "execution_id": "0",
        "child_tasks": [{"pod_name": "fl-kubeflow-x7k2p-system-container-impl-1234567"}],
    }
    document: dict[str, Any] = {
        "experiment_id": "e3b0c442-98fc-4c14-9afb-f4c8996fb924",
        "run_id": run_id,
        "display_name": "fl-2x2-20261201-120000",
        "storage_state": "AVAILABLE",
        "runtime_config": {"parameters": {"num_clients": 2, "num_rounds": 2}},
        "service_account": "default-editor",
        "created_at": stamp,
        "scheduled_at": stamp,
        "finished_at": stamp,
        "state": state,
        "run_details": {"task_details": [node]},
        "state_history": [{"update_time": stamp, "state": "PENDING"}],
    }
    if root:
        document["runtime_config"]["pipeline_root"] = root
    if spec is None:
        document["pipeline_version_reference"] = {
            "pipeline_id": PIPELINE_ID,
            "pipeline_version_id": VERSION_ID,
        }
    else:
        document["pipeline_spec"] = spec
    return document


def test_server_task_names_come_from_the_spec(compiled_spec: dict[str, Any]) -> None:
    names = task_names(compiled_spec["pipeline_spec"])
    assert names[0] == "fl-server" and len(names) == 4  # one per condition branch
    assert task_names(compiled_spec["pipeline_spec"], "fl-client") == ["fl-client"]


def test_trained_model_is_found_downloaded_and_read(
    kfp_api: CannedKfpApi,
    compiled_spec: dict[str, Any],
    federation_output: Path,
    s3_server: S3Server,  # noqa: F811
    tmp_path: Path,
) -> None:
    run_id = str(uuid.uuid4())
    fs = s3_server.filesystem()
    if not fs.exists(KFP_BUCKET):
        fs.mkdir(KFP_BUCKET)
    run_root = f"{KFP_BUCKET}/v2/artifacts/fl-kubeflow/{run_id}"
    # The branch that ran (checkpoints, no initial model), where the driver puts outputs.
    _upload(s3_server, federation_output, f"{run_root}/fl-server-2/{uuid.uuid4()}/trained_model")
    # Decoys: a client's metrics in this run, another run's server outputs.
    fs.pipe(f"{run_root}/fl-client/{uuid.uuid4()}/metrics", b"")
    other = f"{KFP_BUCKET}/v2/artifacts/fl-kubeflow/{uuid.uuid4()}/fl-server/{uuid.uuid4()}"
    fs.pipe(f"{other}/trained_model/history.json", b"{}")
    kfp_api.documents[f"/apis/v2beta1/runs/{run_id}"] = _run_document(
        run_id, "SUCCEEDED", compiled_spec
    )

    results = fetch_run_results(
        kfp_api.client(),
        run_id,
        tmp_path / "results",
        _store(s3_server),
        pipeline_root=f"minio://{KFP_BUCKET}/v2/artifacts",
    )

    assert results.uri is not None
    assert results.uri.startswith(f"minio://{run_root}/fl-server-2/")
    assert results.uri.endswith("/trained_model")
    server_history = json.loads((federation_output / "history.json").read_text())
    assert results.history == server_history
    assert results.metrics == history_metrics(server_history)
    assert results.metrics["rounds"] == 2.0 and results.metrics["clients"] == 2.0
    rows = results.rounds()
    assert [row["round"] for row in rows] == [r["round"] for r in server_history["rounds"]]
    assert rows[-1]["clients"] == 2
    expected = json.loads((federation_output / "history.json").read_text())
    assert results.summary().startswith("# Federated learning run")
    assert f"{int(results.metrics['rounds'])} of {expected['num_rounds']}" in results.summary()
    weights = results.load_weights()
    final = (federation_output / "weights.safetensors").read_bytes()
    assert weights.keys() and all(isinstance(v, np.ndarray) for v in weights.values())
    from fl_kubeflow import wire

    for name, value in wire.decode(bytearray(final)).items():
        np.testing.assert_array_equal(weights[name], value)
    curves = results.learning_curves()
    assert [ax.get_title() for ax in curves.figure.axes] == ["Accuracy", "Loss"]
    assert curves._repr_png_().startswith(b"\x89PNG\r\n\x1a\n")  # what Jupyter shows


def test_run_of_an_uploaded_pipeline_version_with_its_own_root(
    kfp_api: CannedKfpApi,
    compiled_spec: dict[str, Any],
    federation_output: Path,
    s3_server: S3Server,  # noqa: F811
) -> None:
    run_id = str(uuid.uuid4())
    root = f"s3://{s3_server.bucket}/team-a/pipelines"
    folder = f"{s3_server.bucket}/team-a/pipelines/fl-kubeflow/{run_id}/fl-server/{uuid.uuid4()}"
    _upload(s3_server, federation_output, f"{folder}/trained_model")
    kfp_api.documents[f"/apis/v2beta1/runs/{run_id}"] = _run_document(
        run_id, "SUCCEEDED", None, root=root
    )
    kfp_api.documents[f"/apis/v2beta1/pipelines/{PIPELINE_ID}/versions/{VERSION_ID}"] = {
        "pipeline_id": PIPELINE_ID,
        "pipeline_version_id": VERSION_ID,
        "display_name": "v1",
        "pipeline_spec": compiled_spec["pipeline_spec"],
    }
    uri = find_output_uri(kfp_api.client(), run_id, _store(s3_server))
    assert uri == f"s3://{folder}/trained_model"


def test_unfinished_run_and_missing_artifact_are_named(
    kfp_api: CannedKfpApi,
    compiled_spec: dict[str, Any],
    s3_server: S3Server,  # noqa: F811
) -> None:
    running, empty = str(uuid.uuid4()), str(uuid.uuid4())
    kfp_api.documents[f"/apis/v2beta1/runs/{running}"] = _run_document(
        running, "RUNNING", compiled_spec
    )
    root = f"s3://{s3_server.bucket}/nothing-here"
    kfp_api.documents[f"/apis/v2beta1/runs/{empty}"] = _run_document(
        empty, "SUCCEEDED", compiled_spec, root=root
    )
    client, store = kfp_api.client(), _store(s3_server)
    with pytest.raises(RunArtifactsError, match=f"run {running} is RUNNING"):
        find_output_uri(client, running, store)
    with pytest.raises(RunArtifactsError) as missing:
        find_output_uri(client, empty, store)
    assert f"{root}/fl-kubeflow/{empty}" in str(missing.value)
    assert "trained_model/history.json" in str(missing.value)


def test_wrong_credentials_and_absent_artifacts_fail_clearly(
    s3_server: S3Server,  # noqa: F811
    tmp_path: Path,
) -> None:
    uri = s3_server.put("private/trained_model/history.json", b"{}").rsplit("/", 1)[0]
    with pytest.raises(ArtifactStoreError, match="access denied"):
        _store(s3_server, secret="not-the-secret").download(uri, tmp_path / "a")
    with pytest.raises(ArtifactStoreError, match="no such artifact"):
        _store(s3_server).download(f"s3://{s3_server.bucket}/absent/trained_model", tmp_path)
    with pytest.raises(ArtifactStoreError, match="not an S3 URI"):
        _store(s3_server).download("gs://bucket/x", tmp_path)


def test_store_from_environment_variables(s3_server: S3Server) -> None:  # noqa: F811
    store = ArtifactStore.from_env(s3_server.env())
    assert store.endpoint_url == s3_server.endpoint
    assert "secret" not in repr(store).lower().replace("secret_key", "")
    s3_server.put("env/file.txt", b"x")
    assert store.list_files(s3_server.url("env")) == [f"{s3_server.bucket}/env/file.txt"]
    with pytest.raises(ArtifactStoreError, match="AWS_SECRET_ACCESS_KEY not set"):
        ArtifactStore.from_env({"AWS_ACCESS_KEY_ID": "a"})


def test_results_folder_without_history_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"no history\.json"):
        RunResults.from_folder(tmp_path)


@pytest.mark.k8s
def test_profiles_launcher_config_gives_the_pipeline_root(
    k8s_cluster: K8sCluster,
    kfp_api: CannedKfpApi,
    compiled_spec: dict[str, Any],
    federation_output: Path,
    s3_server: S3Server,  # noqa: F811
    tmp_path: Path,
) -> None:
    from kubernetes import client

    namespace, bare = k8s_cluster.create_namespace("profile"), k8s_cluster.create_namespace()
    admin = k8s_cluster.core_v1()
    # What multi-user Kubeflow's profile controller puts in every profile namespace.
    root = f"minio://{s3_server.bucket}/private-artifacts/{namespace}/v2/artifacts"
    admin.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=LAUNCHER_CONFIG), data={LAUNCHER_ROOT_KEY: root}
        ),
    )
    assert default_pipeline_root(namespace, admin) == root
    assert default_pipeline_root(bare, admin) == DEFAULT_PIPELINE_ROOT

    run_id = str(uuid.uuid4())
    folder = root.split("://")[1] + f"/fl-kubeflow/{run_id}/fl-server/{uuid.uuid4()}"
    _upload(s3_server, federation_output, f"{folder}/trained_model")
    kfp_api.documents[f"/apis/v2beta1/runs/{run_id}"] = _run_document(
        run_id, "SUCCEEDED", compiled_spec
    )
    results = fetch_run_results(
        kfp_api.client(),
        run_id,
        tmp_path,
        _store(s3_server),
        pipeline_root=default_pipeline_root(namespace, admin),
    )
    assert results.uri == f"minio://{folder}/trained_model"


@pytest.mark.k8s
def test_store_from_kfps_secret_reads_the_artifact(
    k8s_cluster: K8sCluster,
    s3_server: S3Server,  # noqa: F811
    tmp_path: Path,
) -> None:
    from kubernetes import client

    namespace = k8s_cluster.create_namespace("profile")
    admin = k8s_cluster.core_v1()
    admin.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=DEFAULT_SECRET),
            string_data={"accesskey": s3_server.access_key, "secretkey": s3_server.secret_key},
        ),
    )
    uri = s3_server.put("from-secret/trained_model/history.json", b"{}").rsplit("/", 1)[0]
    store = ArtifactStore.from_secret(namespace, endpoint_url=s3_server.endpoint, core_v1_api=admin)
    assert (store.download(uri, tmp_path / "m") / "history.json").read_bytes() == b"{}"

    # A notebook whose service account may not read Secrets is told so, by name.
    token = grant(k8s_cluster, namespace, "notebook", [("pods", ["get"])])
    with pytest.raises(KubernetesPermissionError, match=r"get.*secrets"):
        ArtifactStore.from_secret(namespace, core_v1_api=k8s_cluster.core_v1(token))
    with pytest.raises(ArtifactStoreError, match=f"Secret {namespace}/absent not found"):
        ArtifactStore.from_secret(namespace, name="absent", core_v1_api=admin)
