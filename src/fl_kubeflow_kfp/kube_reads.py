"""Reading one object of the notebook's namespace (a Secret, a ConfigMap) from Kubernetes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api

T = TypeVar("T")


def pod_namespace(namespace: str | None = None) -> str | None:
    """``namespace`` if given, else this pod's (a notebook's profile), else None (no pod)."""
    if namespace is not None:
        return namespace
    from fl_kubeflow.kube.pod_context import detect_in_cluster

    context = detect_in_cluster()
    return context.namespace if context is not None else None


def read_object(
    read: Callable[[CoreV1Api], T],
    resource: str,
    namespace: str,
    core_v1_api: CoreV1Api | None = None,
) -> T | None:
    """``read(api)``, or None if the object does not exist; a refusal names verb and resource.

    Args:
        read: Reads the object, e.g. ``lambda api: api.read_namespaced_secret(name, ns)``.
        resource: The resource kind for a permission error, e.g. ``secrets``.
        namespace: The object's namespace, for a permission error.
        core_v1_api: A Kubernetes client; default: the pod's service account, else the
            current kubeconfig context.
    """
    from fl_kubeflow.kube.api import call, make_core_v1_api

    api = core_v1_api if core_v1_api is not None else make_core_v1_api()
    return call(lambda: read(api), "get", resource, namespace, absent=(404,))
