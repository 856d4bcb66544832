"""Names, labels and addresses shared by the FL server, its clients and the cleanup step.

Everything here is pure string work (no ``kubernetes`` import), so clients can derive the
server's address from the run UUID alone, exactly as the server named its Service.
"""

from __future__ import annotations

import re

# Put on every KFP v2 executor pod by the KFP backend; its value is the run UUID.
RUN_ID_LABEL = "pipeline/runid"
# Put statically on the server task with kfp-kubernetes ``add_pod_label``.
SERVER_ROLE_LABEL = "fl-kubeflow/role"
SERVER_ROLE = "server"
# Marks objects this project created, so they can be told apart from anything else.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "fl-kubeflow"

DEFAULT_PORT = 8080
PORT_NAME = "http"
# A UUID may start with a digit, and a Service name (DNS-1035 label) may not.
SERVICE_NAME_PREFIX = "fl-"

_MAX_DNS_LABEL = 63
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it can name a Service and be a label value; else raise ValueError.

    The label value must be the run id verbatim (label selectors are case-sensitive), so
    nothing is stripped or rewritten here: a bad value is reported rather than guessed at.
    """
    if not isinstance(run_id, str):
        raise ValueError(f"run id must be a string, got {type(run_id).__name__}: {run_id!r}")
    if not run_id:
        raise ValueError(
            "run id is empty: pass the KFP run UUID (dsl.PIPELINE_JOB_ID_PLACEHOLDER) "
            "as the whole component argument"
        )
    if "{{" in run_id or "}}" in run_id or "$." in run_id:
        # KFP substitutes a placeholder only when it is the whole argument; an f-string in the
        # pipeline definition leaves it literal, and it arrives here unchanged.
        raise ValueError(
            f"run id {run_id!r} looks like an unsubstituted KFP placeholder: pass "
            "dsl.PIPELINE_JOB_ID_PLACEHOLDER as the whole argument (not inside an f-string)"
        )
    max_len = _MAX_DNS_LABEL - len(SERVICE_NAME_PREFIX)
    if len(run_id) > max_len:
        raise ValueError(
            f"run id {run_id!r} is {len(run_id)} characters; at most {max_len} fit in a "
            f"Service name ({SERVICE_NAME_PREFIX!r} + run id <= {_MAX_DNS_LABEL})"
        )
    if not _LABEL_VALUE.match(run_id) or not _DNS_1035_LABEL.match(
        SERVICE_NAME_PREFIX + run_id.lower()
    ):
        raise ValueError(
            f"run id {run_id!r} cannot name a Kubernetes Service: use letters, digits and "
            "inner '-' only (a KFP run UUID such as '0f1e2d3c-...' is fine)"
        )
    return run_id


def service_name(run_id: str) -> str:
    """The per-run Service name: ``fl-<run id, lowercased>``, a valid DNS-1035 label.

    Raises ValueError naming the bad value when the run id cannot make such a name.
    """
    return SERVICE_NAME_PREFIX + _check_run_id(run_id).lower()


def server_selector(run_id: str) -> dict[str, str]:
    """The Service selector matching exactly this run's server pod."""
    return {RUN_ID_LABEL: _check_run_id(run_id), SERVER_ROLE_LABEL: SERVER_ROLE}


def server_url(
    run_id: str,
    namespace: str,
    port: int = DEFAULT_PORT,
    cluster_domain: str | None = None,
    *,
    name: str | None = None,
    scheme: str = "http",
) -> str:
    """The in-cluster URL of this run's server, e.g. ``http://fl-<uuid>.<namespace>.svc:8080``.

    ``name`` is the Service's when it is not ``fl-<run id>`` (a server pipeline's stable
    name). Without ``cluster_domain`` the name relies on the pod's DNS search path (works
    in any cluster); pass e.g. ``"cluster.local"`` for a fully qualified name.
    """
    if not isinstance(namespace, str) or not (
        _DNS_1123_LABEL.match(namespace) and len(namespace) <= _MAX_DNS_LABEL
    ):
        raise ValueError(f"namespace {namespace!r} is not a valid Kubernetes namespace name")
    check_port(port)
    host = f"{name or service_name(run_id)}.{namespace}.svc"
    if cluster_domain:
        host = f"{host}.{cluster_domain.strip('.')}"
    return f"{scheme}://{host}:{port}"


def run_service_name(run_id: str, name: str = "") -> str:
    """The Service of a run: ``name`` when given (checked), else ``fl-<run id>``."""
    if not name:
        return service_name(run_id)
    if not (_DNS_1035_LABEL.match(name) and len(name) <= _MAX_DNS_LABEL):
        raise ValueError(
            f"service name {name!r} is not a DNS-1035 label: lowercase letters, digits and "
            f"inner '-', starting with a letter, at most {_MAX_DNS_LABEL} characters"
        )
    return name


SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")


def check_service_type(service_type: str, node_port: int = 0) -> str:
    """Return ``service_type`` if it is one of :data:`SERVICE_TYPES` and ``node_port`` fits it.

    ``node_port`` 0 lets Kubernetes choose one (NodePort, LoadBalancer); ClusterIP has none.
    """
    if service_type not in SERVICE_TYPES:
        raise ValueError(
            f"service_type must be one of {', '.join(SERVICE_TYPES)}, got {service_type!r}"
        )
    if isinstance(node_port, bool) or not isinstance(node_port, int) or not 0 <= node_port <= 65535:
        raise ValueError(f"node_port must be 0 (any) or a port number, got {node_port!r}")
    if node_port and service_type == "ClusterIP":
        raise ValueError("node_port needs service_type NodePort or LoadBalancer, not ClusterIP")
    return service_type


def check_port(port: int) -> int:
    """Return ``port`` if it is a usable TCP port number; else raise ValueError."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an integer in 1..65535, got {port!r}")
    return port


_DNS_1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_MAX_SECRET_NAME = 253


def check_secret_name(name: str) -> str:
    """Return ``name`` if it can name a Secret (a DNS-1123 subdomain); else raise ValueError."""
    if not (
        isinstance(name, str) and len(name) <= _MAX_SECRET_NAME and _DNS_1123_SUBDOMAIN.match(name)
    ):
        raise ValueError(
            f"{name!r} cannot name a Kubernetes Secret: lowercase letters, digits, '-' and "
            f"'.', starting and ending with a letter or digit, at most {_MAX_SECRET_NAME}"
        )
    return name
