"""Who may reach the server pod, and how: its TLS files and its credential registry.

TLS: the pipeline mounts a ``kubernetes.io/tls`` Secret (``tls.crt``, ``tls.key``) as an
optional volume; present means HTTPS. Beyond ClusterIP (NodePort, LoadBalancer: reachable
from outside the cluster) the server refuses to serve plain HTTP unless told to.

Credentials: the server checks every request against a registry file (token digests,
roles, revocations; ``fl_kubeflow.credentials``). Two sources:

- a *server pipeline* names the registry Secret (made by ``fl-kubeflow credentials issue
  --secret-manifests``); :class:`RegistrySync` reads it through the API every
  ``credentials_reload`` seconds and rewrites the local file when it changes, and the server
  reloads that file, so ``kubectl apply`` of a revoked registry takes effect within seconds
  (a mounted Secret volume would too, but only after the kubelet's sync, about a minute);
- the *all-in-one pipeline* issues one credential per client itself
  (``kube.credential_secrets.publish_run_credentials``): one Secret per client, the
  registry local.

Plain Python; ``kubernetes`` is imported only by the functions that call the API.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from fl_kubeflow import defaults
from fl_kubeflow.credentials import CredentialError, Registry
from fl_kubeflow.kube.api import in_pod
from fl_kubeflow.kube.credential_secrets import publish_run_credentials, read_registry_secret
from fl_kubeflow.kube.naming import SERVICE_TYPES
from fl_kubeflow.kube.pod_context import DEFAULT_TOKEN_DIR, InClusterContext

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api

log = logging.getLogger("fl_kubeflow.tasks.server")

TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
REGISTRY_FILE = "registry.json"


class AccessError(ValueError):
    """The server cannot be exposed as asked (no TLS where it is required, no registry)."""


def tls_files(
    tls_dir: str | os.PathLike[str] | None,
    service_type: str = "ClusterIP",
    allow_plaintext: bool = False,
    tls_secret: str = "",
) -> tuple[Path, Path] | None:
    """``(certificate, key)`` from ``tls_dir`` when both are there, else None.

    Raises AccessError when neither is there and ``service_type`` exposes the server
    beyond the cluster without ``allow_plaintext``, or when only one of them is there.
    """
    if service_type not in SERVICE_TYPES:
        raise AccessError(f"service_type must be one of {', '.join(SERVICE_TYPES)}")
    folder = Path(tls_dir) if tls_dir else None
    cert, key = (folder / TLS_CERT, folder / TLS_KEY) if folder else (None, None)
    found = [path for path in (cert, key) if path is not None and path.is_file()]
    if len(found) == 2 and cert is not None and key is not None:
        return cert, key
    where = f"Secret {tls_secret!r}" if tls_secret else "a TLS Secret"
    if found:
        raise AccessError(f"{where} needs both {TLS_CERT} and {TLS_KEY}; only {found[0].name}")
    if service_type != "ClusterIP" and not allow_plaintext:
        raise AccessError(
            f"a {service_type} Service reaches the server from outside the cluster: TLS is "
            f"required, but {where} with {TLS_CERT} and {TLS_KEY} is not mounted (create a "
            "kubernetes.io/tls Secret: docs/kubeflow.md, Across silos; or set allow_plaintext)"
        )
    if folder is None:  # no TLS asked for (the all-in-one run): nothing to say
        return None
    log.warning(
        "no %s mounted: serving plain HTTP on a %s Service%s",
        where,
        service_type,
        " (allow_plaintext)" if service_type != "ClusterIP" else "",
    )
    return None


class RegistrySync:
    """Keep ``path`` equal to the registry in Secret ``name`` while the server runs.

    ``start()`` reads it once (failing if it cannot) and writes the file, then a thread
    reads it again every ``interval`` seconds and replaces the file atomically when it
    differs. A Secret that cannot be read or parsed later keeps the last good file and
    is logged once until it is good again. ``read`` returns the Secret's registry
    (tests pass their own).
    """

    def __init__(
        self,
        read: Callable[[], Registry],
        path: Path,
        interval: float = defaults.CREDENTIALS_RELOAD,
        name: str = "",
    ) -> None:
        if interval <= 0:
            raise ValueError(f"credentials_reload must be positive, got {interval}")
        self.read = read
        self.path = path
        self.interval = interval
        self.name = name
        self.stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: str | None = None
        self._failing = False

    def start(self) -> Registry:
        registry = self.read()
        self._write(registry)
        log.info(
            "credentials: registry Secret %s: %d clients%s",
            self.name,
            len(registry.clients()),
            _revoked_note(registry),
        )
        self._thread = threading.Thread(target=self._loop, name="registry-sync", daemon=True)
        self._thread.start()
        return registry

    def stop(self) -> None:
        self.stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)

    def __enter__(self) -> RegistrySync:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def sync_once(self) -> bool:
        """Read the Secret now; return whether the file changed."""
        try:
            registry = self.read()
        except Exception as exc:  # the API or the Secret may fail for a while: keep the last
            if not self._failing:
                log.warning("credentials: cannot read registry Secret %s: %s", self.name, exc)
            self._failing = True
            return False
        if self._failing:
            log.info("credentials: registry Secret %s readable again", self.name)
        self._failing = False
        changed = self._write(registry)
        if changed:
            log.info(
                "credentials: registry Secret %s changed: %d clients%s",
                self.name,
                len(registry.clients()),
                _revoked_note(registry),
            )
        return changed

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval):
            self.sync_once()

    def _write(self, registry: Registry) -> bool:
        text = json.dumps(registry.to_json(), sort_keys=True)
        if text == self._current:
            return False
        registry.save(self.path)
        self._current = text
        return True


def _revoked_note(registry: Registry) -> str:
    revoked = sorted(registry.revoked)
    return f", revoked: {', '.join(revoked)}" if revoked else ""


def registry_sync(
    secret: str,
    path: Path,
    interval: float,
    *,
    token_dir: str | os.PathLike[str] = DEFAULT_TOKEN_DIR,
    environ: Mapping[str, str] | None = None,
    core_v1_api: CoreV1Api | None = None,
) -> RegistrySync:
    """A :class:`RegistrySync` of Secret ``secret`` in this pod's namespace.

    Raises AccessError outside a pod: there is no namespace to read it from.
    """

    def make(api: CoreV1Api, context: InClusterContext) -> RegistrySync:
        namespace = context.namespace
        return RegistrySync(
            lambda: read_registry_secret(api, namespace, secret),
            path,
            interval,
            name=f"{namespace}/{secret}",
        )

    made = in_pod(make, token_dir, environ, core_v1_api)
    if made is None:
        raise AccessError(
            f"credentials_secret {secret!r} is read through the Kubernetes API, but this "
            f"is not a pod (no service-account token in {token_dir})"
        )
    return made


def issue_run_registry(
    run_id: str,
    num_clients: int,
    path: Path,
    *,
    token_dir: str | os.PathLike[str] = DEFAULT_TOKEN_DIR,
    environ: Mapping[str, str] | None = None,
    core_v1_api: CoreV1Api | None = None,
) -> Path | None:
    """The all-in-one run's registry file: one credential Secret per client id 0..N-1.

    None outside a pod (then the run is open: a local test of the task).
    """
    try:
        registry = publish_run_credentials(
            run_id,
            [str(i) for i in range(num_clients)],
            token_dir=token_dir,
            environ=environ,
            core_v1_api=core_v1_api,
        )
    except CredentialError as exc:
        raise AccessError(str(exc)) from exc
    if registry is None:
        return None
    registry.save(path)
    return path
