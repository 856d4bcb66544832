"""Kubernetes wiring: the per-run Service and credential Secrets of a run's server pod.

``naming`` (names, labels, addresses), ``pod_context`` (which pod this is, from its
service-account files) and ``permissions`` (RBAC errors) are pure: no ``kubernetes``
import. ``api`` (the client, one checked call, the owner pod), ``service`` and
``credential_secrets`` import ``kubernetes`` only inside the functions that call the API, so
importing this package never needs it.
"""

from fl_kubeflow.kube.api import make_core_v1_api, resolve_owner_pod
from fl_kubeflow.kube.naming import (
    DEFAULT_PORT,
    RUN_ID_LABEL,
    SERVER_ROLE,
    SERVER_ROLE_LABEL,
    server_selector,
    server_url,
    service_name,
)
from fl_kubeflow.kube.permissions import KubernetesPermissionError
from fl_kubeflow.kube.pod_context import DEFAULT_TOKEN_DIR, InClusterContext, detect_in_cluster
from fl_kubeflow.kube.service import (
    RunService,
    cleanup_run_service,
    create_run_service,
    delete_run_service,
    discover_server_url,
    publish_run_service,
)

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TOKEN_DIR",
    "RUN_ID_LABEL",
    "SERVER_ROLE",
    "SERVER_ROLE_LABEL",
    "InClusterContext",
    "KubernetesPermissionError",
    "RunService",
    "cleanup_run_service",
    "create_run_service",
    "delete_run_service",
    "detect_in_cluster",
    "discover_server_url",
    "make_core_v1_api",
    "publish_run_service",
    "resolve_owner_pod",
    "server_selector",
    "server_url",
    "service_name",
]
