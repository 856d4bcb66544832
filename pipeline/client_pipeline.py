"""The client pipeline: one data owner's client, in their own namespace or cluster.

Shape::

    fl-client   (its credential Secret mounted at /fl-credential)

The data owner gets a credential Secret from the server's operator (``fl-kubeflow
credentials issue --secret-manifests``: keys ``client_id``, ``token``, optional ``ca.crt``
and ``server``) and applies it in their own namespace; this pipeline mounts it, so the
client is known by that credential, trusts that CA and reaches ``server_address`` (or the
credential's ``server``). It reads only its own namespace's Secrets (none through the API:
the credential is a volume), never the server's. docs/kubeflow.md, "Across silos".

No ``from __future__ import annotations``: KFP reads annotations as objects.
"""

import inspect
from pathlib import Path
from typing import Any

from fl_kubeflow_kfp.components import DEFAULT_IMAGE, FLComponents, build_components
from fl_kubeflow_kfp.pipeline.federation import (
    CLIENT_DATA_OPTIONS,
    CREDENTIAL_MOUNT,
    TRAINING_OPTIONS,
    client_pod,
)
from fl_kubeflow_kfp.pipeline.fl_pipeline import write_package
from fl_kubeflow_kfp.pipeline.parameters import (
    Parameter,
    pick,
    pipeline_function,
    resource_parameters,
)
from fl_kubeflow_kfp.pipeline.resources import CLIENT_RESOURCES, PodResources
from fl_kubeflow_kfp.pipeline.server_pipeline import CROSS_SILO_JOIN_TIMEOUT
from kfp import dsl, kubernetes

from fl_kubeflow import defaults
from fl_kubeflow.kube.naming import DEFAULT_PORT

CLIENT_PIPELINE_NAME = "fl-kubeflow-client"
CLIENT_PIPELINE_FILE = "fl_client_pipeline.yaml"
SUMMARY = (
    "Federated learning across silos: one data owner's client, in its own namespace, "
    "joining a server pipeline's run with its own credential."
)

HEAD = (
    Parameter(
        "credential_secret",
        str,
        inspect.Parameter.empty,
        (
            "This client's credential Secret in this namespace (client_id, token, optional",
            "ca.crt and server), from fl-kubeflow credentials issue --secret-manifests.",
        ),
    ),
    Parameter(
        "server_address",
        str,
        "",
        (
            "The server's URL, e.g. https://fl-server.team-a.svc:8080 (the server run's",
            "server_address output); empty: the credential's server key.",
        ),
    ),
    Parameter(
        "shard",
        int,
        0,
        (
            "Which part of dataset this client trains on (0..num_shards-1), and which entry",
            "of data_locations it reads; 0 for a data owner's own data.",
        ),
    ),
    Parameter(
        "num_shards",
        int,
        1,
        ("Parts dataset is split into (the number of clients sharing it); 1: all of it.",),
    ),
)
TAIL = (
    Parameter(
        "retry_timeout",
        float,
        CROSS_SILO_JOIN_TIMEOUT,
        ("Seconds to keep retrying an unreachable server (it may start later).",),
    ),
    Parameter(
        "round_wait_timeout",
        float,
        defaults.ROUND_WAIT_TIMEOUT,
        ("Longest wait in seconds for the next round to open.",),
    ),
)
# The federation's parameters a client takes (the server's rounds and strategy are not
# its business), in the order the KFP UI lists them.
CLIENT_OPTIONS = (*TRAINING_OPTIONS, *CLIENT_DATA_OPTIONS, "data_credentials")


def client_pipeline_parameters(client_resources: PodResources) -> tuple[Parameter, ...]:
    """The client pipeline's parameters, in the order the KFP UI lists them."""
    return (*HEAD, *pick(CLIENT_OPTIONS), *TAIL, *resource_parameters("client", client_resources))


def build_client_pipeline(
    image: str = DEFAULT_IMAGE, client_resources: PodResources = CLIENT_RESOURCES
):
    """The client pipeline with its component using ``image``; resources: its defaults."""
    comps: FLComponents = build_components(image)

    def body(p: dict[str, Any]) -> None:
        client = comps.client(
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            client_id=p["shard"],
            num_clients=p["num_shards"],
            server_address=p["server_address"],
            port=DEFAULT_PORT,
            **{name: p[name] for name in (*TRAINING_OPTIONS, *CLIENT_DATA_OPTIONS)},
            retry_timeout=p["retry_timeout"],
            round_wait_timeout=p["round_wait_timeout"],
            credential_dir=CREDENTIAL_MOUNT,
        )
        client_pod(client, p)
        # Not optional: a client without its credential cannot take part.
        kubernetes.use_secret_as_volume(
            client, secret_name=p["credential_secret"], mount_path=CREDENTIAL_MOUNT
        )

    parameters = client_pipeline_parameters(client_resources)
    return dsl.pipeline(name=CLIENT_PIPELINE_NAME)(
        pipeline_function("fl_client_pipeline", SUMMARY, parameters, body)
    )


fl_client_pipeline = build_client_pipeline(DEFAULT_IMAGE)


def compile_client_pipeline(
    output: str | Path = CLIENT_PIPELINE_FILE,
    image: str = DEFAULT_IMAGE,
    client_resources: PodResources = CLIENT_RESOURCES,
) -> Path:
    """Compile the client pipeline into ``output``; the same inputs give the same bytes."""
    return write_package(build_client_pipeline(image, client_resources), output)
