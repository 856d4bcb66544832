"""Where this process runs: the pod's namespace, name, uid and service account.

Read from the mounted service-account files and the environment only: no API call and no
``kubernetes`` import, so clients and local runs can ask "am I in a pod?" for free.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclass(frozen=True)
class InClusterContext:
    """What the process knows about the pod it runs in."""

    namespace: str
    pod_name: str | None
    pod_uid: str | None
    # "system:serviceaccount:<ns>:<name>" from the token, for error messages only.
    service_account: str | None
    token_dir: Path


def detect_in_cluster(
    token_dir: str | os.PathLike[str] = DEFAULT_TOKEN_DIR,
    environ: Mapping[str, str] | None = None,
) -> InClusterContext | None:
    """Return the pod's context, or None when not in a cluster (no service-account token).

    The namespace comes from the mounted ``namespace`` file (KFP sets no namespace variable),
    else ``POD_NAMESPACE``; the pod from ``KFP_POD_NAME``/``KFP_POD_UID``, else the hostname
    (which is the pod name unless the pod spec overrides it). No API call is made here.
    """
    env = os.environ if environ is None else environ
    directory = Path(token_dir)
    token_file = directory / "token"
    if not token_file.is_file():
        return None

    namespace = _read_text(directory / "namespace") or env.get("POD_NAMESPACE", "").strip()
    if not namespace:
        raise RuntimeError(
            f"found a service-account token at {token_file} but no namespace: neither "
            f"{directory / 'namespace'} nor POD_NAMESPACE is set"
        )
    pod_name = env.get("KFP_POD_NAME") or env.get("HOSTNAME") or socket.gethostname() or None
    pod_uid = env.get("KFP_POD_UID") or None
    return InClusterContext(
        namespace=namespace,
        pod_name=pod_name,
        pod_uid=pod_uid,
        service_account=_service_account_from_token(_read_text(token_file)),
        token_dir=directory,
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _service_account_from_token(token: str) -> str | None:
    """The ``sub`` claim of a service-account JWT, read without verifying (messages only)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    subject = claims.get("sub") if isinstance(claims, dict) else None
    return subject if isinstance(subject, str) else None
