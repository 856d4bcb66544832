"""Kubernetes wiring: the per-run Service through which clients reach the FL server.

``naming`` is pure (no ``kubernetes`` import); ``service`` imports ``kubernetes`` only
inside the functions that call the API, so importing this package never needs it.
"""

from fl_kubeflow.kube.naming import (
    DEFAULT_PORT,
    RUN_ID_LABEL,
    SERVER_ROLE,
    SERVER_ROLE_LABEL,
    server_selector,
    server_url,
    service_name,
)
from fl_kubeflow.kube.service import (
    DEFAULT_TOKEN_DIR,
    InClusterContext,
    KubernetesPermissionError,
    RunService,
    cleanup_run_service,
    create_run_service,
    delete_run_service,
    detect_in_cluster,
    discover_server_url,
    make_core_v1_api,
    publish_run_service,
    resolve_owner_pod,
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
