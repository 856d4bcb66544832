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

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fl_kubeflow.kube.api import call, get, in_pod, owner_references, resolve_owner_pod
from fl_kubeflow.kube.naming import (
    DEFAULT_PORT,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    PORT_NAME,
    RUN_ID_LABEL,
    check_port,
    check_service_type,
    run_service_name,
    server_selector,
    server_url,
)
from fl_kubeflow.kube.pod_context import DEFAULT_TOKEN_DIR, InClusterContext, detect_in_cluster

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api, V1Service

log = logging.getLogger(__name__)


# Says whether the server behind the Service speaks https or http, for whoever builds
# its address from the Service alone (the outputs, a person with kubectl).
SCHEME_ANNOTATION = "fl-kubeflow/scheme"
# The pod variable the pipeline fills with its node's IP (status.hostIP): a NodePort
# Service answers on every node, so the server's own node is as good as any.
NODE_IP_ENV = "NODE_IP"


def create_run_service(
    core_v1_api: CoreV1Api,
    namespace: str,
    run_id: str,
    port: int = DEFAULT_PORT,
    owner_pod_name: str | None = None,
    owner_pod_uid: str | None = None,
    *,
    name: str = "",
    service_type: str = "ClusterIP",
    node_port: int = 0,
    scheme: str = "http",
    timeout: float = 30.0,
) -> V1Service:
    """Create (or adopt) this run's Service and return it.

    ``name`` (default ``fl-<run id>``) is a stable name a server pipeline hands out in
    advance; ``service_type`` ClusterIP, NodePort or LoadBalancer, with ``node_port`` 0
    letting Kubernetes choose. Idempotent: if a Service of that name already exists for this
    run with the same selector, type, ports, scheme and owner it is returned as is. One for
    this run that differs (a restarted server: new pod uid) is deleted and created again,
    which needs only the create/get/delete verbs the cleanup step needs anyway. One carrying
    another run's label is an error. Without an owner the Service is not garbage-collected:
    only deletion removes it.
    """
    check_port(port)
    check_service_type(service_type, node_port)
    name = run_service_name(run_id, name)
    body = _service_body(
        name, run_id, port, owner_pod_name, owner_pod_uid, service_type, node_port, scheme
    )
    deadline = time.monotonic() + timeout

    while True:
        # Read first: a create naming a node port that our own Service holds fails with
        # 422 (port allocated) before the name conflict (409) is noticed.
        existing = _read_service(core_v1_api, namespace, name)
        if existing is None:
            created = call(
                lambda: core_v1_api.create_namespaced_service(namespace, body),
                "create",
                "services",
                namespace,
                absent=(409,),
            )
            if created is not None:
                log.info(
                    "created %s Service %s/%s for run %s on port %d",
                    service_type,
                    namespace,
                    name,
                    run_id,
                    port,
                )
                return created
        else:
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
                    "Service %s/%s exists for this run with another owner, type or port "
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


def delete_run_service(core_v1_api: CoreV1Api, namespace: str, run_id: str, name: str = "") -> bool:
    """Delete this run's Service; return whether it existed. A missing Service is fine.

    A Service of a stable ``name`` that another run made stays (``fl-<run id>`` names
    this run alone, so it is deleted without reading it first, needing only delete).
    """
    stable, name = bool(name), run_service_name(run_id, name)
    if not stable:
        deleted = _delete_service(core_v1_api, namespace, name)
    else:
        existing = _read_service(core_v1_api, namespace, name)
        deleted = False
        if existing is not None:
            if (existing.metadata.labels or {}).get(RUN_ID_LABEL) != run_id:
                log.info("Service %s/%s belongs to another run: leaving it", namespace, name)
                return False
            deleted = _delete_service(core_v1_api, namespace, name, uid=existing.metadata.uid)
    if deleted:
        log.info("deleted Service %s/%s", namespace, name)
    else:
        log.info("Service %s/%s was already gone", namespace, name)
    return deleted


def service_address(service: Any, node_ip: str | None = None) -> str | None:
    """The URL to hand to clients for a created Service; None while it has none yet.

    ClusterIP: its DNS name in the cluster (``<scheme>://<name>.<namespace>.svc:<port>``);
    NodePort: ``node_ip`` and the node port (None without a node IP); LoadBalancer: its
    ingress IP or host name once the cloud assigned one.
    """
    meta, spec = service.metadata, service.spec
    scheme = (meta.annotations or {}).get(SCHEME_ANNOTATION, "http")
    (port,) = spec.ports
    if spec.type == "NodePort":
        return (
            f"{scheme}://{_host(node_ip)}:{port.node_port}" if node_ip and port.node_port else None
        )
    if spec.type == "LoadBalancer":
        ingress = (service.status.load_balancer.ingress or []) if service.status else []
        if not ingress or not (ingress[0].ip or ingress[0].hostname):
            return None
        return f"{scheme}://{_host(ingress[0].ip or ingress[0].hostname)}:{port.port}"
    labels = meta.labels or {}
    return server_url(
        labels.get(RUN_ID_LABEL, ""), meta.namespace, port.port, name=meta.name, scheme=scheme
    )


@dataclass
class RunService:
    """A created per-run Service; ``delete()`` (or leaving the ``with`` block) removes it."""

    core_v1_api: CoreV1Api = field(repr=False)
    namespace: str
    run_id: str
    port: int
    name: str
    url: str
    service_type: str = "ClusterIP"

    def address(self, node_ip: str | None = None) -> str | None:
        """The URL to hand to clients, read from the Service now (see ``service_address``)."""
        if self.service_type == "ClusterIP":
            return self.url
        service = _read_service(self.core_v1_api, self.namespace, self.name)
        return None if service is None else service_address(service, node_ip)

    def delete(self) -> bool:
        """Delete the Service (idempotent); return whether it still existed."""
        return delete_run_service(self.core_v1_api, self.namespace, self.run_id, self.name)

    def __enter__(self) -> RunService:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.delete()


def publish_run_service(
    run_id: str,
    port: int = DEFAULT_PORT,
    *,
    name: str = "",
    service_type: str = "ClusterIP",
    node_port: int = 0,
    scheme: str = "http",
    token_dir: str | os.PathLike[str] = DEFAULT_TOKEN_DIR,
    environ: Mapping[str, str] | None = None,
    core_v1_api: CoreV1Api | None = None,
    timeout: float = 30.0,
) -> RunService | None:
    """What the FL server calls at start-up: create the Service if running in a pod.

    ``name``, ``service_type``, ``node_port`` and ``scheme`` are ``create_run_service``'s.
    Returns None (and logs why) outside a cluster; raises KubernetesPermissionError on 403.
    """

    def publish(api: CoreV1Api, context: InClusterContext) -> RunService:
        owner = resolve_owner_pod(api, context)
        if owner is None:
            log.warning(
                "could not identify the server pod (set KFP_POD_NAME/KFP_POD_UID): the Service "
                "gets no ownerReference and is removed only by explicit cleanup"
            )
        created = create_run_service(
            api,
            context.namespace,
            run_id,
            port,
            *(owner or (None, None)),
            name=name,
            service_type=service_type,
            node_port=node_port,
            scheme=scheme,
            timeout=timeout,
        )
        return RunService(
            core_v1_api=api,
            namespace=context.namespace,
            run_id=run_id,
            port=port,
            name=created.metadata.name,
            url=server_url(
                run_id, context.namespace, port, name=created.metadata.name, scheme=scheme
            ),
            service_type=service_type,
        )

    service = in_pod(publish, token_dir, environ, core_v1_api)
    if service is None:
        log.info(
            "not running in a Kubernetes pod (no service-account token in %s): "
            "skipping the per-run Service",
            token_dir,
        )
    return service


def cleanup_run_service(
    run_id: str,
    *,
    name: str = "",
    token_dir: str | os.PathLike[str] = DEFAULT_TOKEN_DIR,
    environ: Mapping[str, str] | None = None,
    core_v1_api: CoreV1Api | None = None,
) -> bool:
    """What the pipeline's cleanup step calls: delete the Service if it is still there.

    Returns whether something was deleted; False (logged) outside a cluster.
    """
    deleted = in_pod(
        lambda api, context: delete_run_service(api, context.namespace, run_id, name),
        token_dir,
        environ,
        core_v1_api,
    )
    if deleted is None:
        log.info("not running in a Kubernetes pod: no per-run Service to clean up")
        return False
    return deleted


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


def _service_body(
    name: str,
    run_id: str,
    port: int,
    owner_pod_name: str | None,
    owner_pod_uid: str | None,
    service_type: str = "ClusterIP",
    node_port: int = 0,
    scheme: str = "http",
) -> Any:
    from kubernetes import client

    owners = owner_references(owner_pod_name, owner_pod_uid)
    return client.V1Service(
        api_version="v1",
        kind="Service",
        metadata=client.V1ObjectMeta(
            name=name,
            labels={RUN_ID_LABEL: run_id, MANAGED_BY_LABEL: MANAGED_BY},
            annotations={SCHEME_ANNOTATION: scheme},
            owner_references=owners,
        ),
        spec=client.V1ServiceSpec(
            type=service_type,
            selector=server_selector(run_id),
            ports=[
                client.V1ServicePort(
                    name=PORT_NAME,
                    protocol="TCP",
                    port=port,
                    target_port=port,
                    node_port=node_port or None,
                )
            ],
        ),
    )


def _matches(existing: Any, wanted: Any) -> bool:
    """Whether an existing Service already is the one we would create."""
    if (existing.spec.selector or {}) != wanted.spec.selector:
        return False
    if (existing.spec.type or "ClusterIP") != wanted.spec.type:
        return False
    if (existing.metadata.annotations or {}).get(SCHEME_ANNOTATION) != (
        wanted.metadata.annotations[SCHEME_ANNOTATION]
    ):
        return False
    existing_ports = {(p.port, str(p.target_port)) for p in existing.spec.ports or []}
    wanted_ports = {(p.port, str(p.target_port)) for p in wanted.spec.ports}
    if existing_ports != wanted_ports:
        return False
    # A node port asked for must be the one there; 0 takes whichever was assigned.
    wanted_node_ports = {p.node_port for p in wanted.spec.ports if p.node_port}
    if wanted_node_ports - {p.node_port for p in existing.spec.ports or []}:
        return False
    existing_owners = {ref.uid for ref in existing.metadata.owner_references or []}
    wanted_owners = {ref.uid for ref in wanted.metadata.owner_references or []}
    return existing_owners == wanted_owners


def _read_service(core_v1_api: CoreV1Api, namespace: str, name: str) -> Any:
    return get(lambda: core_v1_api.read_namespaced_service(name, namespace), "services", namespace)


def _host(host: str) -> str:
    """A host for a URL: an IPv6 address goes in brackets."""
    return f"[{host}]" if ":" in host else host


def _delete_service(
    core_v1_api: CoreV1Api, namespace: str, name: str, uid: str | None = None
) -> bool:
    """Delete a Service; with ``uid``, only that incarnation of it. False if already gone."""
    from kubernetes import client

    options = client.V1DeleteOptions(
        preconditions=client.V1Preconditions(uid=uid) if uid is not None else None
    )

    def delete() -> bool:
        core_v1_api.delete_namespaced_service(name, namespace, body=options)
        return True

    # 409 here means the uid precondition failed: someone already replaced it.
    return bool(call(delete, "delete", "services", namespace, absent=(404, 409)))
