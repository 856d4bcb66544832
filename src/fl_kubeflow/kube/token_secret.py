"""The run's bearer token as a per-run Kubernetes Secret.

The server pod creates ``fl-<run id>-token`` with a fresh random token and an
ownerReference to itself; the client pods read it through the API. So the token
never appears in the compiled YAML, a pipeline parameter, the KFP UI, a pod spec
or a log line. A restarted server finds its Secret and keeps the token, so the
clients' requests stay valid.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from fl_kubeflow.auth import new_token
from fl_kubeflow.kube.naming import MANAGED_BY, MANAGED_BY_LABEL, RUN_ID_LABEL, service_name
from fl_kubeflow.kube.service import (
    DEFAULT_TOKEN_DIR,
    InClusterContext,
    _api_exception_class,
    _name_service_account,
    _permission_error,
    detect_in_cluster,
    make_core_v1_api,
    resolve_owner_pod,
)

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api

log = logging.getLogger(__name__)

T = TypeVar("T")

TOKEN_KEY = "token"


def secret_name(run_id: str) -> str:
    """``fl-<run id>-token``: beside the run's Service, named from the same run id."""
    return f"{service_name(run_id)}-token"


def create_run_token_secret(
    core_v1_api: CoreV1Api,
    namespace: str,
    run_id: str,
    owner_pod_name: str | None = None,
    owner_pod_uid: str | None = None,
) -> str:
    """Create the run's token Secret and return the token; an existing one's token is reused."""
    from kubernetes import client

    name = secret_name(run_id)
    owners = None
    if owner_pod_name and owner_pod_uid:
        owners = [
            client.V1OwnerReference(
                api_version="v1", kind="Pod", name=owner_pod_name, uid=owner_pod_uid
            )
        ]
    body = client.V1Secret(
        api_version="v1",
        kind="Secret",
        type="Opaque",
        metadata=client.V1ObjectMeta(
            name=name,
            labels={RUN_ID_LABEL: run_id, MANAGED_BY_LABEL: MANAGED_BY},
            owner_references=owners,
        ),
        string_data={TOKEN_KEY: new_token()},
    )
    api_exception = _api_exception_class()
    try:
        core_v1_api.create_namespaced_secret(namespace, body)
    except api_exception as exc:
        if exc.status == 403:
            raise _permission_error("create", "secrets", namespace, exc) from exc
        if exc.status != 409:
            raise
        log.info("Secret %s exists already (a restarted server): reusing its token", name)
    token = _read_token(core_v1_api, namespace, run_id)
    if token is None:
        raise RuntimeError(f"Secret {name} vanished right after it was created")
    return token


def read_run_token(
    core_v1_api: CoreV1Api, namespace: str, run_id: str, timeout: float = 300.0
) -> str:
    """The run's token, waiting up to ``timeout`` seconds for the server to create it."""
    deadline = time.monotonic() + timeout
    delay = 0.2
    while True:
        token = _read_token(core_v1_api, namespace, run_id)
        if token is not None:
            return token
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"Secret {secret_name(run_id)} did not appear in namespace {namespace!r} "
                f"within {timeout:g}s: has the server step started?"
            )
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 5.0)


def delete_run_token_secret(core_v1_api: CoreV1Api, namespace: str, run_id: str) -> bool:
    """Delete the run's Secret; False if it was already gone."""
    api_exception = _api_exception_class()
    try:
        core_v1_api.delete_namespaced_secret(secret_name(run_id), namespace)
    except api_exception as exc:
        if exc.status == 403:
            raise _permission_error("delete", "secrets", namespace, exc) from exc
        if exc.status == 404:
            return False
        raise
    return True


def _read_token(core_v1_api: CoreV1Api, namespace: str, run_id: str) -> str | None:
    api_exception = _api_exception_class()
    try:
        secret = core_v1_api.read_namespaced_secret(secret_name(run_id), namespace)
    except api_exception as exc:
        if exc.status == 403:
            raise _permission_error("get", "secrets", namespace, exc) from exc
        if exc.status == 404:
            return None
        raise
    if (secret.metadata.labels or {}).get(RUN_ID_LABEL) != run_id:
        raise RuntimeError(
            f"Secret {secret_name(run_id)} in {namespace!r} does not belong to run {run_id}"
        )
    raw: Any = (secret.data or {}).get(TOKEN_KEY)
    if not raw:
        return None
    return base64.b64decode(raw).decode()


def publish_run_token(
    run_id: str,
    *,
    token_dir: str | os.PathLike[str] = DEFAULT_TOKEN_DIR,
    environ: Mapping[str, str] | None = None,
    core_v1_api: CoreV1Api | None = None,
) -> str | None:
    """What the server pod calls: the run's token, in a Secret it owns. None outside a pod."""

    def publish(api: CoreV1Api, context: InClusterContext) -> str:
        owner = resolve_owner_pod(api, context)
        return create_run_token_secret(
            api, context.namespace, run_id, *(owner if owner else (None, None))
        )

    return _in_pod(publish, token_dir, environ, core_v1_api)


def fetch_run_token(
    run_id: str,
    *,
    timeout: float = 300.0,
    token_dir: str | os.PathLike[str] = DEFAULT_TOKEN_DIR,
    environ: Mapping[str, str] | None = None,
    core_v1_api: CoreV1Api | None = None,
) -> str | None:
    """What a client pod calls: the run's token from its Secret. None outside a pod."""
    return _in_pod(
        lambda api, context: read_run_token(api, context.namespace, run_id, timeout),
        token_dir,
        environ,
        core_v1_api,
    )


def cleanup_run_token(
    run_id: str,
    *,
    token_dir: str | os.PathLike[str] = DEFAULT_TOKEN_DIR,
    environ: Mapping[str, str] | None = None,
    core_v1_api: CoreV1Api | None = None,
) -> bool:
    """What the cleanup step calls: delete the Secret if it is still there."""
    deleted = _in_pod(
        lambda api, context: delete_run_token_secret(api, context.namespace, run_id),
        token_dir,
        environ,
        core_v1_api,
    )
    return bool(deleted)


def _in_pod(
    action: Callable[[CoreV1Api, InClusterContext], T],
    token_dir: str | os.PathLike[str],
    environ: Mapping[str, str] | None,
    core_v1_api: CoreV1Api | None,
) -> T | None:
    """Run ``action`` with this pod's API client and context; None outside a pod."""
    context = detect_in_cluster(token_dir, environ)
    if context is None:
        return None
    api = core_v1_api if core_v1_api is not None else make_core_v1_api(in_cluster=True)
    with _name_service_account(context):
        return action(api, context)
