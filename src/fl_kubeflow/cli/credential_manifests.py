"""The Secrets ``fl-kubeflow credentials`` hands out: manifests, and applying them.

A manifest is a plain dict (its JSON is valid input to ``kubectl apply -f``), with no
namespace: each client's goes to its owner, who applies it in their own namespace or
cluster. Keys and labels are those of ``kube.credential_secrets``, so a Secret made here
and one the all-in-one server pod makes look alike. Building manifests needs no
``kubernetes`` package; applying them (``--kube-namespace``) does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fl_kubeflow.credentials import ClientCredential, Registry, credential_data
from fl_kubeflow.kube.credential_secrets import (
    CLIENT_CREDENTIAL,
    CREDENTIAL_LABEL,
    REGISTRY,
    REGISTRY_KEY,
)
from fl_kubeflow.kube.naming import MANAGED_BY, MANAGED_BY_LABEL, check_secret_name

DEFAULT_NAME_FORMAT = "fl-credential-{client_id}"
DEFAULT_REGISTRY_SECRET = "fl-credential-registry"
CLIENT_ID_FIELD = "{client_id}"


def credential_secret_name(client_id: str, name_format: str = DEFAULT_NAME_FORMAT) -> str:
    """The Secret name of ``client_id``'s credential, from ``name_format``.

    Upper-case letters and '_' (valid in a client id, not in a Secret name) become
    lower-case letters and '-'.
    """
    if CLIENT_ID_FIELD not in name_format:
        raise ValueError(f"the Secret name format {name_format!r} must contain {CLIENT_ID_FIELD}")
    return check_secret_name(
        name_format.replace(CLIENT_ID_FIELD, client_id.lower().replace("_", "-"))
    )


def credential_manifest(
    credential: ClientCredential,
    name_format: str = DEFAULT_NAME_FORMAT,
    ca_pem: str | None = None,
    server: str | None = None,
) -> dict[str, Any]:
    """One client's credential Secret: its folder's keys."""
    return _manifest(
        credential_secret_name(credential.client_id, name_format),
        credential_data(credential, ca_pem, server),
        CLIENT_CREDENTIAL,
    )


def registry_manifest(registry: Registry, name: str = DEFAULT_REGISTRY_SECRET) -> dict[str, Any]:
    """The server's registry Secret: the registry's JSON (digests only) under registry.json."""
    return _manifest(
        name, {REGISTRY_KEY: json.dumps(registry.to_json(), indent=2) + "\n"}, REGISTRY
    )


def manifest_name(manifest: Mapping[str, Any]) -> str:
    return manifest["metadata"]["name"]


def manifest_text(manifest: Mapping[str, Any]) -> str:
    return json.dumps(manifest, indent=2) + "\n"


def apply_manifests(
    manifests: list[dict[str, Any]], namespace: str, kubeconfig: Path | None = None
) -> None:
    """Create each Secret in ``namespace``, or replace the one of its name."""
    from fl_kubeflow.kube.api import call, make_core_v1_api

    api = make_core_v1_api(None if kubeconfig is None else os.fspath(kubeconfig))
    for manifest in manifests:
        name = manifest_name(manifest)
        created = call(
            lambda m=manifest: api.create_namespaced_secret(namespace, m),
            "create",
            "secrets",
            namespace,
            absent=(409,),
        )
        if created is None:
            call(
                lambda m=manifest, n=name: api.replace_namespaced_secret(n, namespace, m),
                "update",
                "secrets",
                namespace,
            )


def _manifest(name: str, data: Mapping[str, str], kind: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": check_secret_name(name),
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, CREDENTIAL_LABEL: kind},
        },
        "stringData": dict(data),
    }
