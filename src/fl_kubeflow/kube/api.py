"""Talking to the Kubernetes API from the pod: the client, one call, the owner pod.

What the per-run Service (``service``) and the per-run token Secret (``token_secret``)
both need: a CoreV1Api built without touching the ``kubernetes`` package's global
configuration, one request with RBAC refusals turned into KubernetesPermissionError,
this pod as the objects' owner, and "do this if we run in a pod".

``kubernetes`` is imported inside the functions that need it, so the rest of the runtime
(and local runs) work without the package installed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, TypeVar

from fl_kubeflow.kube.permissions import name_service_account, permission_error
from fl_kubeflow.kube.pod_context import InClusterContext, detect_in_cluster

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api, V1OwnerReference

log = logging.getLogger(__name__)

T = TypeVar("T")


def make_core_v1_api(
    kubeconfig: str | os.PathLike[str] | None = None,
    *,
    in_cluster: bool | None = None,
    context: str | None = None,
) -> CoreV1Api:
    """Build a CoreV1Api from the pod's service account or from a kubeconfig.

    ``in_cluster=None`` means: in-cluster when no kubeconfig is given and
    ``KUBERNETES_SERVICE_HOST`` is set. A private Configuration is used so that building a
    client never changes the ``kubernetes`` package's global default.
    """
    from kubernetes import client, config

    if in_cluster is None:
        in_cluster = kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ
    configuration = client.Configuration()
    if in_cluster:
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(
            config_file=None if kubeconfig is None else os.fspath(kubeconfig),
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
    return client.CoreV1Api(client.ApiClient(configuration))


def call(
    request: Callable[[], T],
    verb: str,
    resource: str,
    namespace: str,
    *,
    absent: Collection[int] = (),
) -> T | None:
    """Make one API request and return its result.

    A 403 raises KubernetesPermissionError naming ``verb``, ``resource`` and ``namespace``;
    a status in ``absent`` (e.g. 404 on a read, 409 on a create) returns None; any other
    API error is raised as it is.
    """
    from kubernetes.client.exceptions import ApiException

    try:
        return request()
    except ApiException as exc:
        if exc.status == 403:
            raise permission_error(verb, resource, namespace, exc) from exc
        if exc.status in absent:
            return None
        raise


def get(request: Callable[[], T], resource: str, namespace: str) -> T | None:
    """Read one object; None when it does not exist (see :func:`call`)."""
    return call(request, "get", resource, namespace, absent=(404,))


def owner_references(
    owner_pod_name: str | None, owner_pod_uid: str | None
) -> list[V1OwnerReference] | None:
    """The ownerReferences that make the garbage collector remove an object with its pod.

    None without an owner (the object is then removed only by deletion); raises ValueError
    when only one of name and uid is given.
    """
    if (owner_pod_name is None) != (owner_pod_uid is None):
        raise ValueError("pass both owner_pod_name and owner_pod_uid, or neither")
    if owner_pod_name is None or owner_pod_uid is None:
        return None
    from kubernetes import client

    # No blockOwnerDeletion: it would need update on pods/finalizers where the
    # OwnerReferencesPermissionEnforcement admission plugin is on, and is not needed here.
    return [
        client.V1OwnerReference(
            api_version="v1", kind="Pod", name=owner_pod_name, uid=owner_pod_uid
        )
    ]


def resolve_owner_pod(core_v1_api: CoreV1Api, context: InClusterContext) -> tuple[str, str] | None:
    """Return ``(pod name, pod uid)`` of this pod, reading the pod if the uid is unknown.

    None when the pod cannot be found (e.g. the hostname is not the pod name); raises
    KubernetesPermissionError when reading pods is forbidden.
    """
    if not context.pod_name:
        return None
    if context.pod_uid:
        return context.pod_name, context.pod_uid
    pod_name = context.pod_name
    pod = call(
        lambda: core_v1_api.read_namespaced_pod(pod_name, context.namespace),
        "get",
        "pods",
        context.namespace,
        absent=(404,),
    )
    if pod is None:
        log.warning(
            "pod %r not found in namespace %r: cannot own the Service by it",
            context.pod_name,
            context.namespace,
        )
        return None
    return pod.metadata.name, pod.metadata.uid


def in_pod(
    action: Callable[[CoreV1Api, InClusterContext], T],
    token_dir: str | os.PathLike[str],
    environ: Mapping[str, str] | None,
    core_v1_api: CoreV1Api | None,
) -> T | None:
    """Run ``action`` with this pod's API client and context; None outside a pod.

    ``core_v1_api`` replaces the in-cluster client (tests, or a caller that has one). A
    permission error names the pod's service account when the API server's reason did not.
    """
    context = detect_in_cluster(token_dir, environ)
    if context is None:
        return None
    api = core_v1_api if core_v1_api is not None else make_core_v1_api(in_cluster=True)
    with name_service_account(context):
        return action(api, context)
