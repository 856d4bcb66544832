"""The server pipeline: the aggregation server alone, for clients in other namespaces or clusters.

Shape (inside an exit handler that deletes the Service whatever happens)::

    fl-server   (one of: with/without checkpoints x with/without an initial model)

The server publishes a Service (``service_name``, default ``fl-server``: a stable name the
TLS certificate and the data owners' credentials can name in advance) of ``service_type``
ClusterIP, NodePort or LoadBalancer; HTTPS from the ``kubernetes.io/tls`` Secret
``tls_secret`` (required beyond ClusterIP unless ``allow_plaintext``); clients known by the
registry in Secret ``credentials_secret`` (``fl-kubeflow credentials issue
--secret-manifests``), re-read during the run so revocations apply. The address to hand to
data owners is in the server's log and its ``server_address`` output and summary. Each
data owner runs ``client_pipeline`` in their own namespace or cluster. docs/kubeflow.md,
"Across silos".

No ``from __future__ import annotations``: KFP reads annotations as objects.
"""

from pathlib import Path
from typing import Any

from fl_kubeflow_kfp.components import DEFAULT_IMAGE, FLComponents, build_components
from fl_kubeflow_kfp.pipeline.federation import (
    TRAINING_OPTIONS,
    add_servers,
    check_retry_deadline,
    namespace_env,
)
from fl_kubeflow_kfp.pipeline.fl_pipeline import write_package
from fl_kubeflow_kfp.pipeline.parameters import (
    Parameter,
    pick,
    pipeline_function,
    resource_parameters,
)
from fl_kubeflow_kfp.pipeline.resources import SERVER_RESOURCES, PodResources
from kfp import dsl
from kfp.dsl import Model

from fl_kubeflow import defaults
from fl_kubeflow.cli.credential_manifests import (
    DEFAULT_REGISTRY_SECRET as DEFAULT_CREDENTIALS_SECRET,
)
from fl_kubeflow.kube.naming import SERVICE_TYPES

SERVER_PIPELINE_NAME = "fl-kubeflow-server"
SERVER_PIPELINE_FILE = "fl_server_pipeline.yaml"
SUMMARY = (
    "Federated learning across silos: the aggregation server alone, for num_clients data "
    "owners running the client pipeline in their own namespaces or clusters."
)
# Clients start by hand, elsewhere: give them an hour to join (the all-in-one: 15 min).
CROSS_SILO_JOIN_TIMEOUT = 3600.0
DEFAULT_SERVICE_NAME = "fl-server"
DEFAULT_TLS_SECRET = "fl-server-tls"

# The federation's parameters the server takes (not the clients' data options).
SERVER_OPTIONS = (
    "num_clients",
    "num_rounds",
    *TRAINING_OPTIONS,
    "strategy",
    "strategy_options",
    "secure_aggregation",
    "secagg_options",
    "mode",
    "async_options",
    "min_clients",
    "round_timeout",
    "join_timeout",
    "initial_model_uri",
    "checkpoint_pvc",
)
ACCESS_PARAMETERS = (
    Parameter(
        "service_name",
        str,
        DEFAULT_SERVICE_NAME,
        (
            "Name of the server's Service; its address is <service_name>.<namespace>.svc",
            "in the cluster. Empty: fl-<run id>.",
        ),
    ),
    Parameter(
        "service_type",
        str,
        "ClusterIP",
        (
            f"{', '.join(SERVICE_TYPES)}: ClusterIP reaches other namespaces of this",
            "cluster; NodePort and LoadBalancer other clusters (TLS required).",
        ),
    ),
    Parameter(
        "node_port",
        int,
        0,
        ("Node port of a NodePort or LoadBalancer Service; 0: Kubernetes picks one.",),
    ),
    Parameter(
        "tls_secret",
        str,
        DEFAULT_TLS_SECRET,
        (
            "kubernetes.io/tls Secret (tls.crt, tls.key) the server serves HTTPS with;",
            "if it does not exist: plain HTTP, refused beyond ClusterIP.",
        ),
    ),
    Parameter(
        "allow_plaintext",
        bool,
        False,
        ("Serve plain HTTP on a NodePort or LoadBalancer Service without tls_secret.",),
    ),
    Parameter(
        "credentials_secret",
        str,
        DEFAULT_CREDENTIALS_SECRET,
        (
            "Secret with the clients' credential registry (key registry.json, from",
            "fl-kubeflow credentials issue --secret-manifests); kubectl apply a revoked one",
            "to revoke a client during the run.",
        ),
    ),
    Parameter(
        "credentials_reload",
        float,
        defaults.CREDENTIALS_RELOAD,
        ("Seconds between the server's reads of credentials_secret.",),
    ),
)


def server_pipeline_parameters(server_resources: PodResources) -> tuple[Parameter, ...]:
    """The server pipeline's parameters, in the order the KFP UI lists them."""
    join = Parameter(
        "join_timeout",
        float,
        CROSS_SILO_JOIN_TIMEOUT,
        ("Seconds the server waits for all clients to join (they start elsewhere).",),
    )
    head = pick(SERVER_OPTIONS, join_timeout=join)
    return (*head, *ACCESS_PARAMETERS, *resource_parameters("server", server_resources))


def build_server_pipeline(
    image: str = DEFAULT_IMAGE,
    server_resources: PodResources = SERVER_RESOURCES,
    retry_deadline: int | None = None,
):
    """The server pipeline with every component using ``image``.

    ``server_resources`` are the defaults of its resource parameters, ``retry_deadline``
    the checkpointed server's (default: ``federation.server_retry_deadline()``).
    """
    comps: FLComponents = build_components(image)
    retry_deadline = check_retry_deadline(retry_deadline)

    def body(p: dict[str, Any]) -> None:
        cleanup = comps.cleanup(
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, num_clients=0, service_name=p["service_name"]
        )
        cleanup.set_display_name("fl-cleanup")
        cleanup.set_caching_options(False)
        namespace_env(cleanup)
        with dsl.ExitHandler(cleanup, name="federated-server"):
            with dsl.If(p["initial_model_uri"] != "", name="with-initial-model"):
                imported = dsl.importer(
                    artifact_uri=p["initial_model_uri"], artifact_class=Model, reimport=False
                )
                imported.set_display_name("initial-model")
                add_servers(comps, p, retry_deadline, access=True, initial_model=imported.output)
            with dsl.Else(name="fresh-model"):
                add_servers(comps, p, retry_deadline, access=True)

    parameters = server_pipeline_parameters(server_resources)
    return dsl.pipeline(name=SERVER_PIPELINE_NAME)(
        pipeline_function("fl_server_pipeline", SUMMARY, parameters, body)
    )


fl_server_pipeline = build_server_pipeline(DEFAULT_IMAGE)


def compile_server_pipeline(
    output: str | Path = SERVER_PIPELINE_FILE,
    image: str = DEFAULT_IMAGE,
    server_resources: PodResources = SERVER_RESOURCES,
    retry_deadline: int | None = None,
) -> Path:
    """Compile the server pipeline into ``output``; the same inputs give the same bytes."""
    return write_package(build_server_pipeline(image, server_resources, retry_deadline), output)
