"""Where a KFP run's fl-server task put its output artifacts, found from KFP's API.

What KFP 2.17's REST API gives (read from the backend's source, kubeflow/pipelines 2.17.0):
``kfp.Client().get_run(run_id)`` returns a ``V2beta1Run`` with the run's state, its pipeline
spec (or a reference to the pipeline version holding it) and its runtime config (pipeline
root). Its ``run_details.task_details`` are built from the Argo workflow's nodes: display
names, states and times, but no artifacts (their ``inputs``/``outputs`` are left empty:
"TODO: parse input and output artifacts" in ``api_converter.go``). Artifact URIs are only
in ML Metadata, whose Python client (``ml-metadata``) needs protobuf<5 while kfp 2.17 needs
protobuf 6, so it cannot be installed beside the suite.

So the URI is derived from the run's own record, by the rule KFP 2.17's driver uses for
every output (``driver.go``, ``provisionOutputs``)::

    <pipeline root>/<pipeline name>/<run id>/<task name>/<random id>/<output name>

with the pipeline root of the run (its runtime config, else the spec's
``defaultPipelineRoot``, else the namespace's ``kfp-launcher`` ConfigMap, else
``minio://mlpipeline/v2/artifacts``; multi-user Kubeflow's profile controller sets the
ConfigMap's root to ``minio://mlpipeline/private-artifacts/<namespace>/v2/artifacts``),
the pipeline name and the task names of the server tasks from the run's pipeline spec,
and then confirmed by listing the artifact store: the random id is whatever the store
holds. Nothing here is a guessed path: a URI is returned only when the store has the
artifact's files there.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from fl_kubeflow_kfp.artifact_store import ArtifactStore

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api

DEFAULT_PIPELINE_ROOT = "minio://mlpipeline/v2/artifacts"  # KFP 2.17's launcher default
LAUNCHER_CONFIG = "kfp-launcher"  # per-namespace ConfigMap the driver reads its root from
LAUNCHER_ROOT_KEY = "defaultPipelineRoot"
SERVER_TASK = "fl-server"  # the display name the suite gives every server task
TRAINED_MODEL = "trained_model"
HISTORY_FILE = "history.json"
SUCCEEDED = "SUCCEEDED"


class RunArtifactsError(RuntimeError):
    """The run's artifact could not be found; the message says where it was looked for."""


def pipeline_spec_of(client: Any, run: Any) -> dict[str, Any]:
    """The run's pipeline spec as a dict (without the platform spec KFP may wrap it with).

    Args:
        client: A ``kfp.Client``; used only when the run references a pipeline version.
        run: A ``V2beta1Run`` from ``client.get_run``.
    """
    spec = run.pipeline_spec
    if not spec:
        reference = run.pipeline_version_reference
        if reference is None or not reference.pipeline_version_id:
            raise RunArtifactsError(f"run {run.run_id} has neither a pipeline spec nor a version")
        version = client.get_pipeline_version(
            pipeline_id=reference.pipeline_id, pipeline_version_id=reference.pipeline_version_id
        )
        spec = version.pipeline_spec
    if not isinstance(spec, Mapping):
        raise RunArtifactsError(f"run {run.run_id}: its pipeline spec is not a JSON object")
    # kfp.Client sends {"pipeline_spec": ..., "platform_spec": ...} when the YAML has both.
    inner = spec.get("pipeline_spec")
    return dict(inner if isinstance(inner, Mapping) else spec)


def _dags(spec: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield spec.get("root", {}).get("dag", {})
    for component in (spec.get("components") or {}).values():
        if isinstance(component, Mapping) and "dag" in component:
            yield component["dag"]


def task_names(spec: Mapping[str, Any], display_name: str = SERVER_TASK) -> list[str]:
    """The task names (keys in the spec's DAGs) of every task shown as ``display_name``.

    The suite's pipeline has one server task per branch of its conditions (``fl-server``,
    ``fl-server-2``, ...), all displayed as ``fl-server``; one of them runs.

    Args:
        spec: A compiled pipeline spec (IR) as a dict.
        display_name: The tasks' display name (``taskInfo.name``).
    """
    names = {
        name
        for dag in _dags(spec)
        for name, task in (dag.get("tasks") or {}).items()
        if (task.get("taskInfo") or {}).get("name") == display_name
    }
    return sorted(names)


def default_pipeline_root(
    namespace: str | None = None, core_v1_api: CoreV1Api | None = None
) -> str:
    """The pipeline root of runs in ``namespace`` that set none: what KFP's driver uses.

    That is the ``defaultPipelineRoot`` of the namespace's ``kfp-launcher`` ConfigMap, else
    ``minio://mlpipeline/v2/artifacts``. Outside a pod and without ``namespace``: the latter.

    Args:
        namespace: The runs' namespace; default: this pod's (a notebook's profile).
        core_v1_api: A Kubernetes client; default: the pod's service account, else the
            current kubeconfig context.
    """
    from fl_kubeflow_kfp.kube_reads import pod_namespace, read_object

    found = pod_namespace(namespace)
    if found is None:
        return DEFAULT_PIPELINE_ROOT
    config = read_object(
        lambda api: api.read_namespaced_config_map(LAUNCHER_CONFIG, found),
        "configmaps",
        found,
        core_v1_api,
    )
    root = ((config.data or {}) if config is not None else {}).get(LAUNCHER_ROOT_KEY)
    return root or DEFAULT_PIPELINE_ROOT


def pipeline_root_of(run: Any, spec: Mapping[str, Any], default: str) -> str:
    """The pipeline root the run's outputs went to (see the module docstring)."""
    config = run.runtime_config
    root = (config.pipeline_root if config is not None else None) or spec.get("defaultPipelineRoot")
    return (root or default).rstrip("/")


def find_output_uri(
    client: Any,
    run_id: str,
    store: ArtifactStore,
    output: str = TRAINED_MODEL,
    display_name: str = SERVER_TASK,
    pipeline_root: str = DEFAULT_PIPELINE_ROOT,
    marker: str = HISTORY_FILE,
) -> str:
    """The URI of output ``output`` of the run's ``display_name`` task, checked in the store.

    Args:
        client: A ``kfp.Client`` (``kfp.Client()`` in a Kubeflow notebook).
        run_id: The run's id (``run.run_id`` of ``create_run_from_pipeline_package``).
        store: The artifact store the run's pipeline root is in.
        output: The output artifact's name.
        display_name: The task's display name (``taskInfo.name``) in the pipeline.
        pipeline_root: The pipeline root when neither the run nor its spec sets one
            (``default_pipeline_root()`` gives the namespace's).
        marker: A file the artifact folder must hold (the trained model's history).
    """
    run = client.get_run(run_id)
    state = str(run.state or "").upper()
    if state != SUCCEEDED:
        raise RunArtifactsError(
            f"run {run_id} is {state or 'in an unknown state'}: KFP uploads a task's "
            "outputs only when it succeeds"
        )
    spec = pipeline_spec_of(client, run)
    names = task_names(spec, display_name)
    if not names:
        raise RunArtifactsError(f"run {run_id}: its pipeline has no task shown as {display_name!r}")
    pipeline_name = (spec.get("pipelineInfo") or {}).get("name")
    if not pipeline_name:
        raise RunArtifactsError(f"run {run_id}: its pipeline spec has no pipelineInfo.name")
    root = pipeline_root_of(run, spec, pipeline_root)
    scheme = root.partition("://")[0]
    run_prefix = f"{root}/{pipeline_name}/{run.run_id}"
    found: list[str] = []
    for name in names:
        for path in store.list_files(f"{run_prefix}/{name}"):
            # bucket/<prefix>/<task>/<random id>/<output>/<marker>
            parts = path.split("/")
            if parts[-2:] == [output, marker] and parts[-4] == name:
                found.append(path)
    if not found:
        tasks = ", ".join(names)
        raise RunArtifactsError(
            f"run {run_id}: no {output}/{marker} of task {tasks} under {run_prefix} at "
            f"{store.endpoint_url} (is the pipeline root right? pass pipeline_root=...)"
        )
    # One server task runs per run; a retried pod may leave more than one folder: the last.
    latest = max(found, key=store.modified)
    return f"{scheme}://{latest.rsplit('/', 1)[0]}"  # s3fs paths are bucket/key
