"""Per-client credentials and the server's registry as Kubernetes Secrets.

A client's Secret holds the keys of its credential folder (``credentials.credential_data``:
``client_id``, ``token``, optional ``ca.crt`` and ``server``), so mounting it as a volume
gives the client a credential folder. The server's registry Secret holds the registry's
JSON under :data:`REGISTRY_KEY` (digests only: reading it lets nobody act as a client).

The all-in-one pipeline's server pod makes one Secret per client, ``fl-<run>-cred-<id>``,
owned by itself like the run's Service, and each client pod reads its own through the
API; tokens thus never appear in the compiled YAML, a parameter, a pod spec or a log. A
restarted server finds the Secrets and keeps their tokens, so the clients stay valid.

``kubernetes`` is imported inside the functions that call the API.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fl_kubeflow.credentials import (
    CLIENT_ID_KEY,
    TOKEN_KEY,
    ClientCredential,
    CredentialError,
    Registry,
    credential_data,
    issue,
)
from fl_kubeflow.kube.api import call, get, in_pod, owner_references, resolve_owner_pod
from fl_kubeflow.kube.naming import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    RUN_ID_LABEL,
    check_secret_name,
    service_name,
)
from fl_kubeflow.kube.pod_context import DEFAULT_TOKEN_DIR, InClusterContext

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api, V1Secret

log = logging.getLogger(__name__)

# The registry's data key in its Secret (also the file name a mounted one shows).
REGISTRY_KEY = "registry.json"
# Marks what a credential Secret holds, so cleanup and people can tell them apart.
CREDENTIAL_LABEL = "fl-kubeflow/credential"
CLIENT_CREDENTIAL = "client"
REGISTRY = "registry"


def run_credential_secret_name(run_id: str, client_id: str) -> str:
    """``fl-<run id>-cred-<client id>``: a client's Secret in an all-in-one run."""
    return check_secret_name(f"{service_name(run_id)}-cred-{client_id.lower()}")


def credential_secret_body(
    name: str,
    credential: ClientCredential,
    *,
    ca_pem: str | None = None,
    server: str | None = None,
    labels: Mapping[str, str] | None = None,
    owners: Any = None,
) -> V1Secret:
    """A client's Secret: its credential folder's keys, as ``stringData``."""
    return _secret_body(
        name,
        credential_data(credential, ca_pem, server),
        {**(labels or {}), CREDENTIAL_LABEL: CLIENT_CREDENTIAL},
        owners,
    )


def registry_secret_body(
    name: str, registry: Registry, *, labels: Mapping[str, str] | None = None
) -> V1Secret:
    """The server's registry Secret: the registry JSON under :data:`REGISTRY_KEY`."""
    text = json.dumps(registry.to_json(), indent=2) + "\n"
    return _secret_body(name, {REGISTRY_KEY: text}, {**(labels or {}), CREDENTIAL_LABEL: REGISTRY})


def create_secret(core_v1_api: CoreV1Api, namespace: str, body: V1Secret) -> bool:
    """Create ``body``; False (and nothing changed) when a Secret of its name exists."""
    created = call(
        lambda: core_v1_api.create_namespaced_secret(namespace, body),
        "create",
        "secrets",
        namespace,
        absent=(409,),
    )
    return created is not None


def read_secret_data(core_v1_api: CoreV1Api, namespace: str, name: str) -> dict[str, str] | None:
    """A Secret's data, decoded; None when there is no such Secret."""
    secret = _read_secret(core_v1_api, namespace, name)
    return None if secret is None else _decoded(secret)


def read_credential_secret(core_v1_api: CoreV1Api, namespace: str, name: str) -> ClientCredential:
    """The credential in Secret ``name``; CredentialError if it is missing or not one."""
    data = read_secret_data(core_v1_api, namespace, name)
    if data is None:
        raise CredentialError(f"no credential Secret {namespace}/{name}")
    return _credential(data, f"Secret {namespace}/{name}")


def read_registry_secret(core_v1_api: CoreV1Api, namespace: str, name: str) -> Registry:
    """The registry in Secret ``name``; CredentialError if it is missing or not one."""
    data = read_secret_data(core_v1_api, namespace, name)
    if data is None:
        raise CredentialError(f"no registry Secret {namespace}/{name}")
    if REGISTRY_KEY not in data:
        raise CredentialError(f"Secret {namespace}/{name} has no {REGISTRY_KEY!r} key")
    try:
        return Registry.from_json(json.loads(data[REGISTRY_KEY]))
    except json.JSONDecodeError as exc:
        raise CredentialError(f"Secret {namespace}/{name}: {REGISTRY_KEY} is not JSON") from exc


def create_run_credentials(
    core_v1_api: CoreV1Api,
    namespace: str,
    run_id: str,
    client_ids: Sequence[str],
    owner_pod_name: str | None = None,
    owner_pod_uid: str | None = None,
) -> Registry:
    """One Secret per client of an all-in-one run, and the registry the server checks them by.

    A Secret that exists already (a restarted server) keeps its token, which the registry
    then enrols; one that belongs to another run is an error.
    """
    owners = owner_references(owner_pod_name, owner_pod_uid)
    labels = {RUN_ID_LABEL: run_id, MANAGED_BY_LABEL: MANAGED_BY}
    registry = Registry()
    for client_id in client_ids:
        name = run_credential_secret_name(run_id, client_id)
        credential = issue(client_id)
        body = credential_secret_body(name, credential, labels=labels, owners=owners)
        if not create_secret(core_v1_api, namespace, body):
            credential = _run_credential(core_v1_api, namespace, run_id, name)
            if credential is None or credential.client_id != client_id:
                raise RuntimeError(f"Secret {namespace}/{name} is not client {client_id}'s")
            log.info("Secret %s exists already (a restarted server): keeping its token", name)
        registry = registry.enrol(credential)
    log.info("credentials for %d clients in Secrets %s", len(client_ids), name_pattern(run_id))
    return registry


def name_pattern(run_id: str) -> str:
    """How the run's credential Secrets are named, for messages."""
    return f"{service_name(run_id)}-cred-<client id>"


def wait_for_run_credential(
    core_v1_api: CoreV1Api, namespace: str, run_id: str, client_id: str, timeout: float = 300.0
) -> ClientCredential:
    """This client's credential of an all-in-one run, waiting ``timeout`` s for the server."""
    name = run_credential_secret_name(run_id, client_id)
    deadline = time.monotonic() + timeout
    delay = 0.2
    while True:
        credential = _run_credential(core_v1_api, namespace, run_id, name)
        if credential is not None:
            if credential.client_id != client_id:
                raise CredentialError(f"Secret {namespace}/{name} is not client {client_id}'s")
            return credential
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"Secret {name} did not appear in namespace {namespace!r} within "
                f"{timeout:g}s: has the server step started?"
            )
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 5.0)


def delete_run_credentials(
    core_v1_api: CoreV1Api, namespace: str, run_id: str, client_ids: Sequence[str]
) -> int:
    """Delete the run's credential Secrets of ``client_ids``; return how many existed."""
    deleted = 0
    for client_id in client_ids:
        name = run_credential_secret_name(run_id, client_id)

        def delete(name: str = name) -> bool:
            core_v1_api.delete_namespaced_secret(name, namespace)
            return True

        deleted += bool(call(delete, "delete", "secrets", namespace, absent=(404,)))
    return deleted


def publish_run_credentials(
    run_id: str,
    client_ids: Sequence[str],
    *,
    token_dir: str | os.PathLike[str] = DEFAULT_TOKEN_DIR,
    environ: Mapping[str, str] | None = None,
    core_v1_api: CoreV1Api | None = None,
) -> Registry | None:
    """What the all-in-one server pod calls: the clients' Secrets; None outside a pod."""

    def publish(api: CoreV1Api, context: InClusterContext) -> Registry:
        owner = resolve_owner_pod(api, context)
        return create_run_credentials(
            api, context.namespace, run_id, client_ids, *(owner or (None, None))
        )

    return in_pod(publish, token_dir, environ, core_v1_api)


def fetch_run_credential(
    run_id: str,
    client_id: str,
    *,
    timeout: float = 300.0,
    token_dir: str | os.PathLike[str] = DEFAULT_TOKEN_DIR,
    environ: Mapping[str, str] | None = None,
    core_v1_api: CoreV1Api | None = None,
) -> ClientCredential | None:
    """What an all-in-one client pod calls: its own credential. None outside a pod."""
    return in_pod(
        lambda api, context: wait_for_run_credential(
            api, context.namespace, run_id, client_id, timeout
        ),
        token_dir,
        environ,
        core_v1_api,
    )


def cleanup_run_credentials(
    run_id: str,
    client_ids: Sequence[str],
    *,
    token_dir: str | os.PathLike[str] = DEFAULT_TOKEN_DIR,
    environ: Mapping[str, str] | None = None,
    core_v1_api: CoreV1Api | None = None,
) -> int:
    """What the cleanup step calls: delete the clients' Secrets still there."""
    deleted = in_pod(
        lambda api, context: delete_run_credentials(api, context.namespace, run_id, client_ids),
        token_dir,
        environ,
        core_v1_api,
    )
    return deleted or 0


# --- internals ---------------------------------------------------------------------------


def _secret_body(
    name: str, data: Mapping[str, str], labels: Mapping[str, str], owners: Any = None
) -> Any:
    from kubernetes import client

    return client.V1Secret(
        api_version="v1",
        kind="Secret",
        type="Opaque",
        metadata=client.V1ObjectMeta(
            name=check_secret_name(name), labels=dict(labels), owner_references=owners
        ),
        string_data=dict(data),
    )


def _credential(data: Mapping[str, str], where: str) -> ClientCredential:
    client_id, token = data.get(CLIENT_ID_KEY, "").strip(), data.get(TOKEN_KEY, "").strip()
    if not client_id or not token:
        raise CredentialError(f"{where} lacks {CLIENT_ID_KEY!r} or {TOKEN_KEY!r}")
    return ClientCredential(client_id, token)


def _run_credential(
    core_v1_api: CoreV1Api, namespace: str, run_id: str, name: str
) -> ClientCredential | None:
    """The credential in this run's Secret ``name``; None while there is none."""
    secret = _read_secret(core_v1_api, namespace, name)
    if secret is None:
        return None
    if (secret.metadata.labels or {}).get(RUN_ID_LABEL) != run_id:
        raise RuntimeError(f"Secret {namespace}/{name} does not belong to run {run_id}")
    return _credential(_decoded(secret), f"Secret {namespace}/{name}")


def _read_secret(core_v1_api: CoreV1Api, namespace: str, name: str) -> Any:
    return get(lambda: core_v1_api.read_namespaced_secret(name, namespace), "secrets", namespace)


def _decoded(secret: Any) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in (secret.data or {}).items()}
