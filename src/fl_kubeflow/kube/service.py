"""The per-run Service that lets this run's client pods reach its server pod.

The server creates ``fl-<run uuid>`` in its own namespace, selecting
``{pipeline/runid: <uuid>, fl-kubeflow/role: server}`` (so two runs in one namespace never
cross), owned by the server pod (so Kubernetes garbage-collects it if the pod goes without
cleaning up), and deletes it at the end; the pipeline's exit handler deletes it again,
idempotently. Outside a cluster (no service-account token) all of this is skipped.

``kubernetes`` is imported inside the functions that need it, so the rest of the runtime
(and local runs) work without the package installed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fl_kubeflow.kube.naming import (
    DEFAULT_PORT,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    PORT_NAME,
    RUN_ID_LABEL,
    check_port,
    server_selector,
    server_url,
    service_name,
)

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api, V1Service

log = logging.getLogger(__name__)

DEFAULT_TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
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


def make_core_v1_api(
    kubeconfig: str | os.PathLike[str] | None = None,
    *,
    in_cluster: bool | None = None,
    context: str | None = None,
) -> CoreV1Api:
    """Build a CoreV1Api from the pod's service account or from a kubeconfig.

    ``in_cluster=None`` means: in-cluster when no kubeconfig is given and
    ``KUBERNETES_SERVICE_HOST`` is set. A private Configuration is used so that building a
    client never changes the ``kubernetes`` package's global default.
    """
    from kubernetes import client, config

    if in_cluster is None:
        in_cluster = kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ
    configuration = client.Configuration()
    if in_cluster:
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(
            config_file=None if kubeconfig is None else os.fspath(kubeconfig),
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
    return client.CoreV1Api(client.ApiClient(configuration))


def resolve_owner_pod(core_v1_api: CoreV1Api, context: InClusterContext) -> tuple[str, str] | None:
    """Return ``(pod name, pod uid)`` of this pod, reading the pod if the uid is unknown.

    None when the pod cannot be found (e.g. the hostname is not the pod name); raises
    KubernetesPermissionError when reading pods is forbidden.
    """
    if not context.pod_name:
        return None
    if context.pod_uid:
        return context.pod_name, context.pod_uid
    api_exception = _api_exception_class()
    try:
        pod = core_v1_api.read_namespaced_pod(context.pod_name, context.namespace)
    except api_exception as exc:
        if exc.status == 403:
            raise _permission_error("get", "pods", context.namespace, exc) from exc
        if exc.status == 404:
            log.warning(
                "pod %r not found in namespace %r: cannot own the Service by it",
                context.pod_name,
                context.namespace,
            )
            return None
        raise
    return pod.metadata.name, pod.metadata.uid


def create_run_service(
    core_v1_api: CoreV1Api,
    namespace: str,
    run_id: str,
    port: int = DEFAULT_PORT,
    owner_pod_name: str | None = None,
    owner_pod_uid: str | None = None,
    *,
    timeout: float = 30.0,
) -> V1Service:
    """Create (or adopt) this run's Service and return it.

    Idempotent: if a Service of that name already exists for this run with the same
    selector, port and owner it is returned as is. One for this run that differs (a restarted
    server: new pod uid) is deleted and created again, which needs only the create/get/delete
    verbs the cleanup step needs anyway. One carrying another run's label is an error.
    Without an owner the Service is not garbage-collected: only deletion removes it.
    """
    check_port(port)
    name = service_name(run_id)
    if (owner_pod_name is None) != (owner_pod_uid is None):
        raise ValueError("pass both owner_pod_name and owner_pod_uid, or neither")
    body = _service_body(name, run_id, port, owner_pod_name, owner_pod_uid)
    api_exception = _api_exception_class()
    deadline = time.monotonic() + timeout

    while True:
        try:
            created = core_v1_api.create_namespaced_service(namespace, body)
        except api_exception as exc:
            if exc.status == 403:
                raise _permission_error("create", "services", namespace, exc) from exc
            if exc.status != 409:
                raise
        else:
            log.info("created Service %s/%s for run %s on port %d", namespace, name, run_id, port)
            return created

        existing = _read_service(core_v1_api, namespace, name)
        if existing is not None:
            owner_run = (existing.metadata.labels or {}).get(RUN_ID_LABEL)
            if owner_run != run_id:
                raise RuntimeError(
                    f"Service {namespace}/{name} already exists for run {owner_run!r}, not "
                    f"{run_id!r}; refusing to take it over"
                )
            if existing.metadata.deletion_timestamp is None:
                if _matches(existing, body):
                    log.info(
                        "Service %s/%s already exists for this run: reusing it", namespace, name
                    )
                    return existing
                log.info(
                    "Service %s/%s exists for this run with another owner or port "
                    "(server restarted?): replacing it",
                    namespace,
                    name,
                )
                _delete_service(core_v1_api, namespace, name, uid=existing.metadata.uid)
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"Service {namespace}/{name} kept conflicting for {timeout:.0f}s "
                "(is it stuck terminating?)"
            )
        time.sleep(0.2)


def delete_run_service(core_v1_api: CoreV1Api, namespace: str, run_id: str) -> bool:
    """Delete this run's Service; return whether it existed. A missing Service is fine."""
    name = service_name(run_id)
    deleted = _delete_service(core_v1_api, namespace, name)
    if deleted:
        log.info("deleted Service %s/%s", namespace, name)
    else:
        log.info("Service %s/%s was already gone", namespace, name)
    return deleted


@dataclass
class RunService:
    """A created per-run Service; ``delete()`` (or leaving the ``with`` block) removes it."""

    core_v1_api: CoreV1Api = field(repr=False)
    namespace: str
    run_id: str
    port: int
    name: str
    url: str

    def delete(self) -> bool:
        """Delete the Service (idempotent); return whether it still existed."""
        return delete_run_service(self.core_v1_api, self.namespace, self.run_id)

    def __enter__(self) -> RunService:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.delete()


def publish_run_service(
    run_id: str,
    port: int = DEFAULT_PORT,
    *,
    token_dir: str | os.PathLike[str] = DEFAULT_TOKEN_DIR,
    environ: Mapping[str, str] | None = None,
    core_v1_api: CoreV1Api | None = None,
    timeout: float = 30.0,
) -> RunService | None:
    """What the FL server calls at start-up: create the Service if running in a pod.

    Returns None (and logs why) outside a cluster; raises KubernetesPermissionError on 403.
    """
    context = detect_in_cluster(token_dir, environ)
    if context is None:
        log.info(
            "not running in a Kubernetes pod (no service-account token in %s): "
            "skipping the per-run Service",
            token_dir,
        )
        return None
    api = core_v1_api if core_v1_api is not None else make_core_v1_api(in_cluster=True)
    with _name_service_account(context):
        owner = resolve_owner_pod(api, context)
        if owner is None:
            log.warning(
                "could not identify the server pod (set KFP_POD_NAME/KFP_POD_UID): the Service "
                "gets no ownerReference and is removed only by explicit cleanup"
            )
        create_run_service(
            api,
            context.namespace,
            run_id,
            port,
            owner[0] if owner else None,
            owner[1] if owner else None,
            timeout=timeout,
        )
    return RunService(
        core_v1_api=api,
        namespace=context.namespace,
        run_id=run_id,
        port=port,
        name=service_name(run_id),
        url=server_url(run_id, context.namespace, port),
    )


def cleanup_run_service(
    run_id: str,
    *,
    token_dir: str | os.PathLike[str] = DEFAULT_TOKEN_DIR,
    environ: Mapping[str, str] | None = None,
    core_v1_api: CoreV1Api | None = None,
) -> bool:
    """What the pipeline's cleanup step calls: delete the Service if it is still there.

    Returns whether something was deleted; False (logged) outside a cluster.
    """
    context = detect_in_cluster(token_dir, environ)
    if context is None:
        log.info("not running in a Kubernetes pod: no per-run Service to clean up")
        return False
    api = core_v1_api if core_v1_api is not None else make_core_v1_api(in_cluster=True)
    with _name_service_account(context):
        return delete_run_service(api, context.namespace, run_id)


def discover_server_url(
    run_id: str,
    port: int = DEFAULT_PORT,
    *,
    token_dir: str | os.PathLike[str] = DEFAULT_TOKEN_DIR,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """What a client calls: the server's in-cluster URL, or None outside a cluster.

    Clients run in the server's namespace, so their own namespace is the server's.
    """
    context = detect_in_cluster(token_dir, environ)
    if context is None:
        return None
    return server_url(run_id, context.namespace, port)


# --- internals ---------------------------------------------------------------------------


def _api_exception_class() -> type[Any]:
    from kubernetes.client.exceptions import ApiException

    return ApiException


def _service_body(
    name: str,
    run_id: str,
    port: int,
    owner_pod_name: str | None,
    owner_pod_uid: str | None,
) -> Any:
    from kubernetes import client

    owner_references = None
    if owner_pod_name is not None and owner_pod_uid is not None:
        # No blockOwnerDeletion: it would need update on pods/finalizers where the
        # OwnerReferencesPermissionEnforcement admission plugin is on, and is not needed here.
        owner_references = [
            client.V1OwnerReference(
                api_version="v1", kind="Pod", name=owner_pod_name, uid=owner_pod_uid
            )
        ]
    return client.V1Service(
        api_version="v1",
        kind="Service",
        metadata=client.V1ObjectMeta(
            name=name,
            labels={RUN_ID_LABEL: run_id, MANAGED_BY_LABEL: MANAGED_BY},
            owner_references=owner_references,
        ),
        spec=client.V1ServiceSpec(
            type="ClusterIP",
            selector=server_selector(run_id),
            ports=[
                client.V1ServicePort(name=PORT_NAME, protocol="TCP", port=port, target_port=port)
            ],
        ),
    )


def _matches(existing: Any, wanted: Any) -> bool:
    """Whether an existing Service already is the one we would create."""
    if (existing.spec.selector or {}) != wanted.spec.selector:
        return False
    existing_ports = {(p.port, str(p.target_port)) for p in existing.spec.ports or []}
    wanted_ports = {(p.port, str(p.target_port)) for p in wanted.spec.ports}
    if existing_ports != wanted_ports:
        return False
    existing_owners = {ref.uid for ref in existing.metadata.owner_references or []}
    wanted_owners = {ref.uid for ref in wanted.metadata.owner_references or []}
    return existing_owners == wanted_owners


def _read_service(core_v1_api: CoreV1Api, namespace: str, name: str) -> Any | None:
    api_exception = _api_exception_class()
    try:
        return core_v1_api.read_namespaced_service(name, namespace)
    except api_exception as exc:
        if exc.status == 403:
            raise _permission_error("get", "services", namespace, exc) from exc
        if exc.status == 404:
            return None
        raise


def _delete_service(
    core_v1_api: CoreV1Api, namespace: str, name: str, uid: str | None = None
) -> bool:
    """Delete a Service; with ``uid``, only that incarnation of it. False if already gone."""
    from kubernetes import client

    api_exception = _api_exception_class()
    options = client.V1DeleteOptions(
        preconditions=client.V1Preconditions(uid=uid) if uid is not None else None
    )
    try:
        core_v1_api.delete_namespaced_service(name, namespace, body=options)
    except api_exception as exc:
        if exc.status == 403:
            raise _permission_error("delete", "services", namespace, exc) from exc
        # 409 here means the uid precondition failed: someone already replaced it.
        if exc.status in (404, 409):
            return False
        raise
    return True


def _permission_error(
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
def _name_service_account(context: InClusterContext) -> Iterator[None]:
    """Fill in the service account from the token when the API server's reason lacked it."""
    try:
        yield
    except KubernetesPermissionError as exc:
        if exc.service_account or not context.service_account:
            raise
        raise KubernetesPermissionError(
            exc.verb, exc.resource, exc.namespace, context.service_account, exc.detail
        ) from exc


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
