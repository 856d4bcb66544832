"""RBAC refusals (HTTP 403) turned into an error a user can act on.

No ``kubernetes`` import: an ``ApiException`` is only read here (its ``body``/``reason``).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any

from fl_kubeflow.kube.pod_context import InClusterContext

RBAC_DOC = "docs/rbac.md"

_FORBIDDEN_USER = re.compile(r'User "([^"]+)"')


class KubernetesPermissionError(PermissionError):
    """RBAC refused a call the FL server or cleanup step needs (HTTP 403).

    The message names the verb, resource, namespace and service account, and which Role
    grants it, because the person reading it is usually not the one who wrote the pipeline.
    """

    def __init__(
        self,
        verb: str,
        resource: str,
        namespace: str,
        service_account: str | None = None,
        detail: str = "",
    ) -> None:
        self.verb = verb
        self.resource = resource
        self.namespace = namespace
        self.service_account = service_account
        self.detail = detail
        who = f"service account {service_account!r}" if service_account else "this pod"
        message = (
            f"Kubernetes RBAC forbids {who} to {verb!r} {resource!r} in namespace "
            f"{namespace!r}. The FL server and its cleanup step need services and secrets: "
            f"create, get, delete (clients: secrets get; pods: get when KFP_POD_UID is unset) "
            f"in the run's namespace. "
            f"Multi-user Kubeflow: pipelines run as 'default-editor', which each profile binds "
            f"to the ClusterRole 'kubeflow-edit' (it has these verbs): check the RoleBinding "
            f"'default-editor' in {namespace!r}. Standalone KFP: grant them to the "
            f"'pipeline-runner' service account (its role 'pipeline-runner' normally has them). "
            f"A ready Role + RoleBinding is in {RBAC_DOC}."
        )
        if detail:
            message += f" API server said: {detail}"
        super().__init__(message)


def permission_error(
    verb: str, resource: str, namespace: str, exc: Any
) -> KubernetesPermissionError:
    """Turn a 403 ApiException into a KubernetesPermissionError with the server's reason."""
    detail = ""
    try:
        detail = str(json.loads(exc.body).get("message", ""))
    except (TypeError, ValueError, AttributeError):
        detail = str(getattr(exc, "body", "") or getattr(exc, "reason", "") or "")
    match = _FORBIDDEN_USER.search(detail)
    service_account = match.group(1) if match else None
    return KubernetesPermissionError(verb, resource, namespace, service_account, detail)


@contextlib.contextmanager
def name_service_account(context: InClusterContext) -> Iterator[None]:
    """Fill in the service account from the token when the API server's reason lacked it."""
    try:
        yield
    except KubernetesPermissionError as exc:
        if exc.service_account or not context.service_account:
            raise
        raise KubernetesPermissionError(
            exc.verb, exc.resource, exc.namespace, context.service_account, exc.detail
        ) from exc
