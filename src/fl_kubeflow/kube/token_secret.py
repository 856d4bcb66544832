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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fl_kubeflow.auth import new_token
from fl_kubeflow.kube.api import call, in_pod, owner_references, resolve_owner_pod
from fl_kubeflow.kube.naming import MANAGED_BY, MANAGED_BY_LABEL, RUN_ID_LABEL, service_name
from fl_kubeflow.kube.pod_context import DEFAULT_TOKEN_DIR, InClusterContext

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api

log = logging.getLogger(__name__)

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
    body = client.V1Secret(
        api_version="v1",
        kind="Secret",
        type="Opaque",
        metadata=client.V1ObjectMeta(
            name=name,
            labels={RUN_ID_LABEL: run_id, MANAGED_BY_LABEL: MANAGED_BY},
            owner_references=owner_references(owner_pod_name, owner_pod_uid),
        ),
        string_data={TOKEN_KEY: new_token()},
    )
    created = call(
        lambda: core_v1_api.create_namespaced_secret(namespace, body),
        "create",
        "secrets",
        namespace,
        absent=(409,),
    )
    if created is None:
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

    def delete() -> bool:
        core_v1_api.delete_namespaced_secret(secret_name(run_id), namespace)
        return True

    return bool(call(delete, "delete", "secrets", namespace, absent=(404,)))


def _read_token(core_v1_api: CoreV1Api, namespace: str, run_id: str) -> str | None:
    secret = call(
        lambda: core_v1_api.read_namespaced_secret(secret_name(run_id), namespace),
        "get",
        "secrets",
        namespace,
        absent=(404,),
    )
    if secret is None:
        return None
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
        return create_run_token_secret(api, context.namespace, run_id, *(owner or (None, None)))

    return in_pod(publish, token_dir, environ, core_v1_api)


def fetch_run_token(
    run_id: str,
    *,
    timeout: float = 300.0,
    token_dir: str | os.PathLike[str] = DEFAULT_TOKEN_DIR,
    environ: Mapping[str, str] | None = None,
    core_v1_api: CoreV1Api | None = None,
) -> str | None:
    """What a client pod calls: the run's token from its Secret. None outside a pod."""
    return in_pod(
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
    deleted = in_pod(
        lambda api, context: delete_run_token_secret(api, context.namespace, run_id),
        token_dir,
        environ,
        core_v1_api,
    )
    return bool(deleted)
