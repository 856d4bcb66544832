"""The per-run Service against a real kube-apiserver + controller-manager (no mocks).

What is checked is what the design relies on: the selector reaches exactly this run's server
pod (Endpoints), the ownerReference makes the garbage collector remove the Service with the
pod, cleanup is idempotent, and RBAC failures come back as a message a user can act on.
There is no kubelet: "running" pods are faked by patching their status (see
../shared/k8s/README.md).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fl_kubeflow.kube import (
    RUN_ID_LABEL,
    SERVER_ROLE,
    SERVER_ROLE_LABEL,
    KubernetesPermissionError,
    cleanup_run_service,
    create_run_service,
    delete_run_service,
    detect_in_cluster,
    discover_server_url,
    make_core_v1_api,
    publish_run_service,
    service_name,
)
from fl_kubeflow.kube.service import SCHEME_ANNOTATION

# tests/ is not a package: pytest puts tests/ itself on sys.path, `python -m pytest` the root.
from tests.k8s_cluster import K8sCluster  # the k8s_cluster fixture comes from conftest.py

k8s = pytest.mark.k8s

PORT = 8080
WAIT = 30.0  # controllers act in well under a second here; 30 s absorbs a loaded machine


def new_run_id(first: str = "7") -> str:
    """A KFP-style run UUID; digit-leading by default, which a Service name may not be."""
    return first + str(uuid.uuid4())[1:]


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Poll until ``check()`` is truthy and return it; fail the test at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def api_status(call: Callable[[], Any]) -> int:
    """HTTP status of an API call: 200 if it succeeds, else the ApiException's status."""
    from kubernetes.client.exceptions import ApiException

    try:
        call()
    except ApiException as exc:
        return int(exc.status)
    return 200


def server_labels(run_id: str) -> dict[str, str]:
    """The labels KFP (runid) and the pipeline (role) put on a run's server pod."""
    return {RUN_ID_LABEL: run_id, SERVER_ROLE_LABEL: SERVER_ROLE}


def create_pod(
    cluster: K8sCluster, namespace: str, name: str, labels: dict[str, str], node: str | None = None
) -> Any:
    from kubernetes import client

    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(
            node_name=node,
            containers=[
                client.V1Container(
                    name="main",
                    image="registry.invalid/fl-kubeflow:test",
                    ports=[client.V1ContainerPort(container_port=PORT)],
                )
            ],
        ),
    )
    return cluster.core_v1().create_namespaced_pod(namespace, pod)


def fake_running(cluster: K8sCluster, namespace: str, name: str, ip: str) -> None:
    """Do what a kubelet would: report the pod Running and Ready with an IP."""
    status = {
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        }
    }
    cluster.core_v1().patch_namespaced_pod_status(name, namespace, status)


def create_node(cluster: K8sCluster) -> str:
    from kubernetes import client

    name = f"node-{uuid.uuid4().hex[:8]}"
    cluster.core_v1().create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name)))
    return name


def delete_pod_now(cluster: K8sCluster, namespace: str, name: str) -> None:
    # Grace period 0: without a kubelet a graceful delete never completes.
    cluster.core_v1().delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def endpoint_ips(cluster: K8sCluster, namespace: str, name: str) -> set[str]:
    from kubernetes.client.exceptions import ApiException

    try:
        endpoints = cluster.core_v1().read_namespaced_endpoints(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return set()
        raise
    return {address.ip for subset in endpoints.subsets or [] for address in subset.addresses or []}


def grant(
    cluster: K8sCluster, namespace: str, account: str, rules: list[tuple[str, list[str]]]
) -> str:
    """Create a Role with ``(resource, verbs)`` rules bound to ``account``; return its token."""
    from kubernetes import client

    token = cluster.service_account_token(namespace, account)
    rbac = cluster.rbac_v1()
    role = f"{account}-role"
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name=role),
            rules=[
                client.V1PolicyRule(api_groups=[""], resources=[resource], verbs=verbs)
                for resource, verbs in rules
            ],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name=role),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name=role
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name=account, namespace=namespace)
            ],
        ),
    )
    # The authorizer reads RBAC from an informer cache: wait until the grant is visible.
    resource, verbs = rules[0]
    wait_for(
        f"RBAC for {account} to take effect",
        lambda: allowed(cluster, token, namespace, verbs[0], resource),
        timeout=10,
    )
    return token


def allowed(cluster: K8sCluster, token: str, namespace: str, verb: str, resource: str) -> bool:
    from kubernetes import client

    review = client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                namespace=namespace, verb=verb, resource=resource
            )
        )
    )
    api = client.AuthorizationV1Api(cluster.api_client(token))
    return bool(api.create_self_subject_access_review(review).status.allowed)


def fake_token_dir(directory: Path, token: str, namespace: str) -> Path:
    """What a pod sees at /var/run/secrets/kubernetes.io/serviceaccount."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "token").write_text(token)
    (directory / "namespace").write_text(namespace)
    return directory


# --- against the real API server -----------------------------------------------------------


@k8s
def test_service_has_name_port_selector_and_owner(k8s_cluster: K8sCluster) -> None:
    namespace = k8s_cluster.create_namespace()
    run_id = new_run_id()
    pod = create_pod(k8s_cluster, namespace, "server-a", server_labels(run_id))
    core = k8s_cluster.core_v1()

    create_run_service(core, namespace, run_id, PORT, pod.metadata.name, pod.metadata.uid)

    service = core.read_namespaced_service(f"fl-{run_id}", namespace)
    assert service.metadata.name == service_name(run_id)
    assert service.metadata.labels[RUN_ID_LABEL] == run_id
    assert service.spec.selector == {RUN_ID_LABEL: run_id, SERVER_ROLE_LABEL: SERVER_ROLE}
    assert service.spec.type == "ClusterIP"
    assert service.spec.cluster_ip.startswith("10.96.")
    [port] = service.spec.ports
    assert (port.port, port.target_port, port.protocol) == (PORT, PORT, "TCP")
    [owner] = service.metadata.owner_references
    assert (owner.api_version, owner.kind, owner.name, owner.uid) == (
        "v1",
        "Pod",
        "server-a",
        pod.metadata.uid,
    )


@k8s
def test_endpoints_reach_only_this_runs_server(k8s_cluster: K8sCluster) -> None:
    namespace = k8s_cluster.create_namespace()
    node = create_node(k8s_cluster)
    run_a, run_b = new_run_id("1"), new_run_id("2")
    core = k8s_cluster.core_v1()
    # Two runs' servers in one namespace, plus a client pod of run A (same run id, no role).
    pods = {
        "server-a": (server_labels(run_a), "10.244.0.5"),
        "server-b": (server_labels(run_b), "10.244.0.6"),
        "client-a": ({RUN_ID_LABEL: run_a}, "10.244.0.7"),
    }
    uids = {}
    for name, (labels, ip) in pods.items():
        uids[name] = create_pod(k8s_cluster, namespace, name, labels, node).metadata.uid
        fake_running(k8s_cluster, namespace, name, ip)
    create_run_service(core, namespace, run_a, PORT, "server-a", uids["server-a"])
    create_run_service(core, namespace, run_b, PORT, "server-b", uids["server-b"])

    # Wait until the endpoints controller has published both, so it has seen every pod.
    ips_a = wait_for(
        "run A's Endpoints", lambda: endpoint_ips(k8s_cluster, namespace, service_name(run_a))
    )
    ips_b = wait_for(
        "run B's Endpoints", lambda: endpoint_ips(k8s_cluster, namespace, service_name(run_b))
    )
    assert ips_a == {"10.244.0.5"}
    assert ips_b == {"10.244.0.6"}
    endpoints = core.read_namespaced_endpoints(service_name(run_a), namespace)
    assert [(p.port, p.protocol) for p in endpoints.subsets[0].ports] == [(PORT, "TCP")]
    assert endpoints.subsets[0].addresses[0].target_ref.name == "server-a"


@k8s
def test_deleting_server_pod_garbage_collects_service(k8s_cluster: K8sCluster) -> None:
    namespace = k8s_cluster.create_namespace()
    run_a, run_b = new_run_id(), new_run_id()
    core = k8s_cluster.core_v1()
    pod_a = create_pod(k8s_cluster, namespace, "server-a", server_labels(run_a))
    pod_b = create_pod(k8s_cluster, namespace, "server-b", server_labels(run_b))
    create_run_service(core, namespace, run_a, PORT, "server-a", pod_a.metadata.uid)
    create_run_service(core, namespace, run_b, PORT, "server-b", pod_b.metadata.uid)

    delete_pod_now(k8s_cluster, namespace, "server-a")

    wait_for(
        "the garbage collector to delete run A's Service",
        lambda: (
            api_status(lambda: core.read_namespaced_service(service_name(run_a), namespace)) == 404
        ),
    )
    # The other run's Service is owned by a pod that still exists.
    assert core.read_namespaced_service(service_name(run_b), namespace).metadata.name


@k8s
def test_cleanup_is_idempotent(k8s_cluster: K8sCluster) -> None:
    namespace = k8s_cluster.create_namespace()
    run_id = new_run_id()
    core = k8s_cluster.core_v1()
    create_run_service(core, namespace, run_id, PORT)

    assert delete_run_service(core, namespace, run_id) is True
    assert delete_run_service(core, namespace, run_id) is False
    assert api_status(lambda: core.read_namespaced_service(service_name(run_id), namespace)) == 404


@k8s
def test_create_is_idempotent_and_follows_a_restarted_server(k8s_cluster: K8sCluster) -> None:
    namespace = k8s_cluster.create_namespace()
    run_id = new_run_id()
    core = k8s_cluster.core_v1()
    first = create_pod(k8s_cluster, namespace, "server-1", server_labels(run_id))

    created = create_run_service(core, namespace, run_id, PORT, "server-1", first.metadata.uid)
    again = create_run_service(core, namespace, run_id, PORT, "server-1", first.metadata.uid)
    assert again.metadata.uid == created.metadata.uid  # same object, not recreated

    # A retried server runs in a new pod: the Service must follow it, or the garbage
    # collector would delete it together with the old pod.
    delete_pod_now(k8s_cluster, namespace, "server-1")
    second = create_pod(k8s_cluster, namespace, "server-2", server_labels(run_id))
    moved = create_run_service(core, namespace, run_id, PORT, "server-2", second.metadata.uid)
    assert moved.metadata.uid != created.metadata.uid
    assert [ref.uid for ref in moved.metadata.owner_references] == [second.metadata.uid]
    time.sleep(1.0)  # give the garbage collector a chance to (wrongly) act on the old owner
    current = core.read_namespaced_service(service_name(run_id), namespace)
    assert current.metadata.uid == moved.metadata.uid


@k8s
def test_service_of_another_run_is_not_taken_over(k8s_cluster: K8sCluster) -> None:
    namespace = k8s_cluster.create_namespace()
    run_id = "a" + str(uuid.uuid4())[1:]
    core = k8s_cluster.core_v1()
    create_run_service(core, namespace, run_id, PORT)
    # Same Service name (names are lowercased), different label value: a different run.
    with pytest.raises(RuntimeError, match="already exists for run"):
        create_run_service(core, namespace, run_id.upper(), PORT, timeout=5)
    service = core.read_namespaced_service(service_name(run_id), namespace)
    assert service.metadata.labels[RUN_ID_LABEL] == run_id


@k8s
def test_node_port_and_load_balancer_services_and_their_addresses(
    k8s_cluster: K8sCluster, tmp_path: Path
) -> None:
    namespace = k8s_cluster.create_namespace()
    core = k8s_cluster.core_v1()
    token_dir = fake_token_dir(tmp_path / "sa", "unused", namespace)
    fixed, chosen, balanced = new_run_id("1"), new_run_id("2"), new_run_id("3")

    node_port = publish_run_service(
        fixed,
        PORT,
        service_type="NodePort",
        node_port=30443,
        scheme="https",
        token_dir=token_dir,
        environ={},
        core_v1_api=core,
    )
    assert node_port is not None
    service = core.read_namespaced_service(service_name(fixed), namespace)
    assert service.spec.type == "NodePort" and service.spec.ports[0].node_port == 30443
    assert service.metadata.annotations[SCHEME_ANNOTATION] == "https"
    assert [ref.uid for ref in service.metadata.owner_references or []] == []  # no such pod
    assert node_port.address("192.0.2.7") == "https://192.0.2.7:30443"
    assert node_port.address(None) is None  # a node port needs a node
    # Asking for it again is idempotent; another type replaces it.
    again = create_run_service(
        core, namespace, fixed, PORT, service_type="NodePort", node_port=30443, scheme="https"
    )
    assert again.metadata.uid == service.metadata.uid
    moved = create_run_service(
        core, namespace, fixed, PORT, service_type="ClusterIP", scheme="https"
    )
    assert moved.metadata.uid != service.metadata.uid and moved.spec.type == "ClusterIP"

    assigned = publish_run_service(
        chosen, PORT, service_type="NodePort", token_dir=token_dir, environ={}, core_v1_api=core
    )
    assert assigned is not None
    port = core.read_namespaced_service(service_name(chosen), namespace).spec.ports[0].node_port
    assert 30000 <= port <= 32767
    assert assigned.address("192.0.2.7") == f"http://192.0.2.7:{port}"

    lb = publish_run_service(
        balanced,
        PORT,
        service_type="LoadBalancer",
        scheme="https",
        token_dir=token_dir,
        environ={},
        core_v1_api=core,
    )
    assert lb is not None and lb.address() is None  # no cloud has assigned an ingress yet
    core.patch_namespaced_service_status(
        service_name(balanced),
        namespace,
        {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}},
    )
    assert lb.address() == f"https://203.0.113.9:{PORT}"

    with pytest.raises(ValueError, match="node_port needs"):
        create_run_service(core, namespace, new_run_id(), PORT, node_port=30001)
    with pytest.raises(ValueError, match="service_type must be one of"):
        create_run_service(core, namespace, new_run_id(), PORT, service_type="ExternalName")


@k8s
def test_a_stable_service_name_is_this_runs_alone(k8s_cluster: K8sCluster, tmp_path: Path) -> None:
    namespace = k8s_cluster.create_namespace()
    core = k8s_cluster.core_v1()
    token_dir = fake_token_dir(tmp_path / "sa", "unused", namespace)
    run_a, run_b = new_run_id("4"), new_run_id("5")
    service = publish_run_service(
        run_a, PORT, name="fl-server", token_dir=token_dir, environ={}, core_v1_api=core
    )
    assert service is not None and service.name == "fl-server"
    assert service.address() == f"http://fl-server.{namespace}.svc:{PORT}"
    # A second run may not take it, nor delete it in its cleanup.
    with pytest.raises(RuntimeError, match="already exists for run"):
        create_run_service(core, namespace, run_b, PORT, name="fl-server", timeout=2)
    assert (
        cleanup_run_service(run_b, name="fl-server", token_dir=token_dir, core_v1_api=core) is False
    )
    assert (
        core.read_namespaced_service("fl-server", namespace).metadata.labels[RUN_ID_LABEL] == run_a
    )
    assert (
        cleanup_run_service(run_a, name="fl-server", token_dir=token_dir, core_v1_api=core) is True
    )
    with pytest.raises(ValueError, match="DNS-1035"):
        create_run_service(core, namespace, run_a, PORT, name="Bad_Name")


@k8s
def test_kubeflow_edit_like_role_can_publish_and_clean_up(
    k8s_cluster: K8sCluster, tmp_path: Path
) -> None:
    namespace = k8s_cluster.create_namespace()
    run_id = new_run_id()
    # What kubeflow-edit grants that matters here (it grants more).
    token = grant(
        k8s_cluster,
        namespace,
        "default-editor",
        [("services", ["create", "get", "delete", "list"]), ("pods", ["get"])],
    )
    pod = create_pod(k8s_cluster, namespace, "server-a", server_labels(run_id))
    token_dir = fake_token_dir(tmp_path / "sa", token, namespace)
    as_editor = k8s_cluster.core_v1(token)
    # No KFP_POD_UID: the uid must come from reading the pod (pods: get).
    environ = {"KFP_POD_NAME": "server-a"}

    context = detect_in_cluster(token_dir, environ)
    assert context is not None
    assert context.namespace == namespace
    assert context.service_account == f"system:serviceaccount:{namespace}:default-editor"

    published = publish_run_service(
        run_id, PORT, token_dir=token_dir, environ=environ, core_v1_api=as_editor
    )
    assert published is not None
    assert published.url == f"http://fl-{run_id}.{namespace}.svc:{PORT}"
    assert discover_server_url(run_id, PORT, token_dir=token_dir, environ={}) == published.url
    service = k8s_cluster.core_v1().read_namespaced_service(published.name, namespace)
    assert [ref.uid for ref in service.metadata.owner_references] == [pod.metadata.uid]

    assert published.delete() is True
    assert cleanup_run_service(run_id, token_dir=token_dir, environ={}, core_v1_api=as_editor) is (
        False
    )


@k8s
def test_missing_rbac_names_verb_resource_and_role(k8s_cluster: K8sCluster, tmp_path: Path) -> None:
    namespace = k8s_cluster.create_namespace()
    run_id = new_run_id()
    # Can read Services and pods, but not create or delete them.
    token = grant(
        k8s_cluster, namespace, "viewer", [("services", ["get", "list"]), ("pods", ["get"])]
    )
    as_viewer = k8s_cluster.core_v1(token)

    with pytest.raises(KubernetesPermissionError) as create_error:
        create_run_service(as_viewer, namespace, run_id, PORT)
    error = create_error.value
    assert (error.verb, error.resource, error.namespace) == ("create", "services", namespace)
    assert error.service_account == f"system:serviceaccount:{namespace}:viewer"
    message = str(error)
    for expected in (
        "'create'",
        "'services'",
        namespace,
        "viewer",
        "kubeflow-edit",
        "pipeline-runner",
        "docs/rbac.md",
    ):
        assert expected in message
    assert isinstance(error, PermissionError)

    # Cleanup needs delete; it must say so rather than pass for "already gone".
    k8s_cluster.core_v1().create_namespaced_service(
        namespace, {"metadata": {"name": service_name(run_id)}, "spec": {"ports": [{"port": 80}]}}
    )
    with pytest.raises(KubernetesPermissionError, match="'delete' 'services'"):
        delete_run_service(as_viewer, namespace, run_id)

    # Without KFP_POD_UID the server reads its own pod: missing pods/get is named too.
    no_pods = grant(k8s_cluster, namespace, "no-pods", [("services", ["create", "get", "delete"])])
    token_dir = fake_token_dir(tmp_path / "sa", no_pods, namespace)
    with pytest.raises(KubernetesPermissionError, match="'get' 'pods'"):
        publish_run_service(
            new_run_id(),
            token_dir=token_dir,
            environ={"KFP_POD_NAME": "server-a"},
            core_v1_api=k8s_cluster.core_v1(no_pods),
        )


@k8s
def test_core_v1_api_from_kubeconfig(k8s_cluster: K8sCluster) -> None:
    api = make_core_v1_api(k8s_cluster.kubeconfig)
    names = {ns.metadata.name for ns in api.list_namespace().items}
    assert "default" in names


# --- no cluster needed -----------------------------------------------------------------------


def test_not_in_cluster_skips_the_service(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert detect_in_cluster(tmp_path, environ={}) is None
    with caplog.at_level(logging.INFO, logger="fl_kubeflow.kube.service"):
        assert publish_run_service(new_run_id(), token_dir=tmp_path, environ={}) is None
    assert "skipping the per-run Service" in caplog.text
    assert cleanup_run_service(new_run_id(), token_dir=tmp_path, environ={}) is False
    assert discover_server_url(new_run_id(), token_dir=tmp_path, environ={}) is None


def test_detect_in_cluster_reads_namespace_and_pod(tmp_path: Path) -> None:
    token_dir = fake_token_dir(tmp_path, "not-a-jwt", "kubeflow-user-example-com\n")
    context = detect_in_cluster(
        token_dir, environ={"KFP_POD_NAME": "run-xyz-server", "KFP_POD_UID": "u-1"}
    )
    assert context is not None
    assert (context.namespace, context.pod_name, context.pod_uid) == (
        "kubeflow-user-example-com",
        "run-xyz-server",
        "u-1",
    )
    assert context.service_account is None
    # Falls back to the hostname, which is the pod name unless the pod spec overrides it.
    fallback = detect_in_cluster(token_dir, environ={"HOSTNAME": "pod-from-hostname"})
    assert fallback is not None
    assert (fallback.pod_name, fallback.pod_uid) == ("pod-from-hostname", None)


def test_importing_kube_package_does_not_import_kubernetes_or_kfp() -> None:
    code = (
        "import sys, fl_kubeflow.kube; "
        "bad = [m for m in ('kubernetes', 'kfp') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
