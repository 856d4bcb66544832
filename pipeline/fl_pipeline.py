"""The federated-learning pipeline: one server task and N client tasks, running at once.

Shape (inside an exit handler that deletes the run's Service whatever happens)::

    client-ids ──> ParallelFor(ids, no parallelism limit) ──> fl-client x N
    fl-server   (no data dependency on the clients: starts at the same time)

The server creates the Service ``fl-<run uuid>`` selecting its own pod by the label
``pipeline/runid`` (put on every pod by KFP) and ``fl-kubeflow/role=server`` (put on
the server pod here); clients derive the same name from the run UUID. With an initial
model URI, an importer feeds the server (a ``dsl.If``/``dsl.Else`` pair of server tasks,
because an importer cannot take an empty URI).

``build_pipeline(image)`` builds it for a chosen image; ``compile_pipeline`` writes YAML.
The tasks themselves are ``federation``'s, shared with the ``federated_training`` graph
component. No ``from __future__ import annotations``: KFP reads annotations as objects.
"""

from pathlib import Path
from typing import Any

from fl_kubeflow_kfp.components import DEFAULT_IMAGE, FLComponents, build_components
from fl_kubeflow_kfp.pipeline.federation import (
    CLIENT_ROLE,
    SERVER_RETRIES,
    SERVER_RETRY_BACKOFF,
    add_clients,
    add_servers,
    check_client_component,
    check_retry_deadline,
    namespace_env,
    server_retry_deadline,
)
from fl_kubeflow_kfp.pipeline.parameters import federation_parameters, pipeline_function
from fl_kubeflow_kfp.pipeline.resources import (
    CLIENT_RESOURCES,
    FIELDS,
    SERVER_RESOURCES,
    PodResources,
)
from kfp import compiler, dsl
from kfp.dsl import Model, base_component

PIPELINE_NAME = "fl-kubeflow"
SUMMARY = "Federated learning: an aggregation server and N clients training together."

__all__ = [
    "CLIENT_RESOURCES",
    "CLIENT_ROLE",
    "FIELDS",
    "PIPELINE_NAME",
    "SERVER_RESOURCES",
    "SERVER_RETRIES",
    "SERVER_RETRY_BACKOFF",
    "PodResources",
    "build_pipeline",
    "compile_pipeline",
    "fl_pipeline",
    "server_retry_deadline",
]


def build_pipeline(
    image: str = DEFAULT_IMAGE,
    server_resources: PodResources = SERVER_RESOURCES,
    client_resources: PodResources = CLIENT_RESOURCES,
    retry_deadline: int | None = None,
    client_component: base_component.BaseComponent | None = None,
):
    """The pipeline function with every component using ``image``.

    ``server_resources`` and ``client_resources`` are the defaults of the pipeline's
    resource parameters (``server_cpu_request`` ... ``client_memory_limit``).
    ``retry_deadline`` is the checkpointed server's retry deadline in seconds
    (default: :func:`server_retry_deadline` for the default rounds and timeouts).
    ``client_component`` replaces the built-in client with a user's own KFP component
    (see ``federation.CLIENT_CONTRACT``; checked here, naming what it lacks).
    """
    comps: FLComponents = build_components(image)
    retry_deadline = check_retry_deadline(retry_deadline)
    if client_component is not None:
        check_client_component(client_component)

    def body(p: dict[str, Any]) -> None:
        cleanup = comps.cleanup(
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, num_clients=p["num_clients"]
        )
        cleanup.set_display_name("fl-cleanup")
        cleanup.set_caching_options(False)
        namespace_env(cleanup)

        with dsl.ExitHandler(cleanup, name="federated-run"):
            ids = comps.client_ids(num_clients=p["num_clients"])
            ids.set_display_name("client-ids")
            with dsl.If(p["initial_model_uri"] != "", name="with-initial-model"):
                imported = dsl.importer(
                    artifact_uri=p["initial_model_uri"], artifact_class=Model, reimport=False
                )
                imported.set_display_name("initial-model")
                add_servers(comps, p, retry_deadline, initial_model=imported.output)
            with dsl.Else(name="fresh-model"):
                add_servers(comps, p, retry_deadline)
            add_clients(comps, p, ids, client_component)

    parameters = federation_parameters(server_resources, client_resources, initial_model_uri=True)
    return dsl.pipeline(name=PIPELINE_NAME)(
        pipeline_function("fl_pipeline", SUMMARY, parameters, body)
    )


fl_pipeline = build_pipeline(DEFAULT_IMAGE)


def compile_pipeline(
    output: str | Path = "fl_pipeline.yaml",
    image: str = DEFAULT_IMAGE,
    server_resources: PodResources = SERVER_RESOURCES,
    client_resources: PodResources = CLIENT_RESOURCES,
    retry_deadline: int | None = None,
) -> Path:
    """Compile the pipeline into ``output``; the same inputs give the same bytes.

    ``image`` is every component's image; the resources are the defaults of the
    pipeline's resource parameters, ``retry_deadline`` the server's (see ``build_pipeline``).
    """
    pipeline = build_pipeline(image, server_resources, client_resources, retry_deadline)
    return write_package(pipeline, output)


def write_package(pipeline: Any, output: str | Path) -> Path:
    """Compile ``pipeline`` into ``output`` (its folder made if missing)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, package_path=str(output))
    return output
