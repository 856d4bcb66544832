"""Credentials as Kubernetes Secrets: one per client, one for the server's registry.

A client's Secret has the keys of its credential folder (``credentials.credential_data``:
``client_id``, ``token``, optionally ``ca.crt`` and ``server``), so mounted as a volume it
is the folder ``fl-kubeflow client --credential`` reads. Each goes to its owner's
namespace alone. The registry Secret holds ``registry.json`` (token digests only): the
server mounts it, and reads it again when the kubelet swaps in a new version.

Manifests are plain dicts (JSON is valid input to ``kubectl apply -f``); the API calls
take a CoreV1Api (``kube.api.make_core_v1_api``). Nothing here logs a Secret's data.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fl_kubeflow.credentials import ClientCredential, Registry, credential_data
from fl_kubeflow.kube.api import call
from fl_kubeflow.kube.naming import MANAGED_BY, MANAGED_BY_LABEL

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api

log = logging.getLogger(__name__)

DEFAULT_NAME_FORMAT = "fl-credential-{client_id}"
DEFAULT_REGISTRY_SECRET = "fl-credential-registry"
REGISTRY_KEY = "registry.json"
# Which client a credential Secret is for (a label value: client ids are valid ones).
CLIENT_LABEL = "fl-kubeflow/client"
_DNS_1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_MAX_NAME = 253


def check_secret_name(name: str) -> str:
    """``name`` if it can name a Secret (a DNS-1123 subdomain); else ValueError."""
    if len(name) > _MAX_NAME or not _DNS_1123_SUBDOMAIN.match(name):
        raise ValueError(
            f"{name!r} cannot name a Secret: lower-case letters, digits, '-' and '.', "
            f"starting and ending with a letter or digit, at most {_MAX_NAME} characters"
        )
    return name


def credential_secret_name(client_id: str, name_format: str = DEFAULT_NAME_FORMAT) -> str:
    """The Secret name of ``client_id``'s credential, from ``name_format`` ({client_id}).

    Upper-case letters and '_' (valid in a client id, not in a Secret name) become
    lower-case and '-'.
    """
    if "{client_id}" not in name_format:
        raise ValueError(f"the Secret name format {name_format!r} must contain {{client_id}}")
    safe = client_id.lower().replace("_", "-")
    return check_secret_name(name_format.replace("{client_id}", safe))


def secret_manifest(
    name: str,
    string_data: Mapping[str, str],
    *,
    namespace: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """An Opaque Secret's manifest with these string values."""
    metadata: dict[str, Any] = {
        "name": check_secret_name(name),
        "labels": {MANAGED_BY_LABEL: MANAGED_BY, **(labels or {})},
    }
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata,
        "stringData": dict(string_data),
    }


def credential_manifest(
    credential: ClientCredential,
    *,
    name_format: str = DEFAULT_NAME_FORMAT,
    namespace: str | None = None,
    ca_pem: str | None = None,
    server: str | None = None,
) -> dict[str, Any]:
    """The Secret of one client's credential: its folder's keys."""
    return secret_manifest(
        credential_secret_name(credential.client_id, name_format),
        credential_data(credential, ca_pem, server),
        namespace=namespace,
        labels={CLIENT_LABEL: credential.client_id},
    )


def registry_manifest(
    registry: Registry, *, name: str = DEFAULT_REGISTRY_SECRET, namespace: str | None = None
) -> dict[str, Any]:
    """The Secret of the server's registry, under the key ``registry.json``."""
    text = json.dumps(registry.to_json(), indent=2) + "\n"
    return secret_manifest(name, {REGISTRY_KEY: text}, namespace=namespace)


def apply_secret(core_v1_api: CoreV1Api, namespace: str, manifest: Mapping[str, Any]) -> str:
    """Create the Secret, or replace the one of that name; its name."""
    name = manifest["metadata"]["name"]
    body = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
    created = call(
        lambda: core_v1_api.create_namespaced_secret(namespace, body),
        "create",
        "secrets",
        namespace,
        absent=(409,),
    )
    if created is None:
        call(
            lambda: core_v1_api.replace_namespaced_secret(name, namespace, body),
            "update",
            "secrets",
            namespace,
        )
        log.info("Secret %s/%s replaced", namespace, name)
    else:
        log.info("Secret %s/%s created", namespace, name)
    return name


def read_secret_data(core_v1_api: CoreV1Api, namespace: str, name: str) -> dict[str, str] | None:
    """A Secret's values, decoded; None if there is no such Secret."""
    secret = call(
        lambda: core_v1_api.read_namespaced_secret(name, namespace),
        "get",
        "secrets",
        namespace,
        absent=(404,),
    )
    if secret is None:
        return None
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def read_registry_secret(
    core_v1_api: CoreV1Api, namespace: str, name: str = DEFAULT_REGISTRY_SECRET
) -> Registry | None:
    """The registry in a registry Secret; None if there is no such Secret."""
    data = read_secret_data(core_v1_api, namespace, name)
    if data is None:
        return None
    if REGISTRY_KEY not in data:
        raise ValueError(f"Secret {namespace}/{name} has no {REGISTRY_KEY!r} key")
    return Registry.from_json(json.loads(data[REGISTRY_KEY]))
