"""The per-run token Secret against a real kube-apiserver + controller-manager."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from fl_kubeflow.kube import RUN_ID_LABEL, KubernetesPermissionError, create_run_service
from fl_kubeflow.kube.token_secret import (
    cleanup_run_token,
    create_run_token_secret,
    fetch_run_token,
    publish_run_token,
    read_run_token,
    secret_name,
)
from tests.k8s_cluster import K8sCluster  # the k8s_cluster fixture comes from conftest.py
from tests.test_kube_service import (
    create_pod,
    delete_pod_now,
    fake_token_dir,
    grant,
    new_run_id,
    server_labels,
    wait_for,
)

pytestmark = pytest.mark.k8s

SERVER_RULES = [("secrets", ["create", "get", "delete"]), ("pods", ["get"])]


def test_server_publishes_and_client_reads_the_same_token(
    k8s_cluster: K8sCluster, tmp_path: Path
) -> None:
    namespace = k8s_cluster.create_namespace()
    run_id = new_run_id()
    pod = create_pod(k8s_cluster, namespace, "server-a", server_labels(run_id))
    server_sa = grant(k8s_cluster, namespace, "server-sa", SERVER_RULES)
    client_sa = grant(k8s_cluster, namespace, "client-sa", [("secrets", ["get"])])
    server_dir = fake_token_dir(tmp_path / "server", server_sa, namespace)
    client_dir = fake_token_dir(tmp_path / "client", client_sa, namespace)
    environ = {"KFP_POD_NAME": "server-a"}

    fetched: list[str] = []
    # A client that starts first waits for the Secret.
    waiter = threading.Thread(
        target=lambda: fetched.append(
            fetch_run_token(
                run_id,
                timeout=30,
                token_dir=client_dir,
                environ={},
                core_v1_api=k8s_cluster.core_v1(client_sa),
            )
        )
    )
    waiter.start()
    time.sleep(1.0)
    token = publish_run_token(
        run_id, token_dir=server_dir, environ=environ, core_v1_api=k8s_cluster.core_v1(server_sa)
    )
    waiter.join(40)
    assert token is not None and len(token) >= 43
    assert fetched == [token]

    secret = k8s_cluster.core_v1().read_namespaced_secret(secret_name(run_id), namespace)
    assert [ref.uid for ref in secret.metadata.owner_references] == [pod.metadata.uid]
    assert secret.metadata.labels["pipeline/runid"] == run_id
    # A restarted server finds its Secret and keeps the token the clients hold.
    again = publish_run_token(
        run_id, token_dir=server_dir, environ=environ, core_v1_api=k8s_cluster.core_v1(server_sa)
    )
    assert again == token

    # The Secret goes with the server pod.
    delete_pod_now(k8s_cluster, namespace, "server-a")

    def gone() -> bool:
        names = [
            s.metadata.name for s in k8s_cluster.core_v1().list_namespaced_secret(namespace).items
        ]
        return secret_name(run_id) not in names

    wait_for("the token Secret to be garbage-collected", gone)


def test_cleanup_is_idempotent_and_reading_times_out(
    k8s_cluster: K8sCluster, tmp_path: Path
) -> None:
    namespace = k8s_cluster.create_namespace()
    run_id = new_run_id()
    admin = k8s_cluster.core_v1()
    create_run_token_secret(admin, namespace, run_id)
    token_dir = fake_token_dir(tmp_path / "sa", "unused", namespace)
    assert cleanup_run_token(run_id, token_dir=token_dir, environ={}, core_v1_api=admin) is True
    assert cleanup_run_token(run_id, token_dir=token_dir, environ={}, core_v1_api=admin) is False
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="did not appear"):
        read_run_token(admin, namespace, run_id, timeout=1.0)
    assert time.monotonic() - started < 10


def test_missing_secret_rbac_is_named(k8s_cluster: K8sCluster) -> None:
    namespace = k8s_cluster.create_namespace()
    token = grant(k8s_cluster, namespace, "no-secrets", [("services", ["create", "get"])])
    with pytest.raises(KubernetesPermissionError) as error:
        create_run_token_secret(k8s_cluster.core_v1(token), namespace, new_run_id())
    assert (error.value.verb, error.value.resource) == ("create", "secrets")
    assert "secrets" in str(error.value) and "docs/rbac.md" in str(error.value)


def test_not_in_a_pod_there_is_no_secret(tmp_path: Path) -> None:
    assert publish_run_token(new_run_id(), token_dir=tmp_path / "none", environ={}) is None
    assert fetch_run_token(new_run_id(), token_dir=tmp_path / "none", environ={}) is None


def test_service_and_secret_share_one_owner_rule(k8s_cluster: K8sCluster) -> None:
    # A name without a uid cannot make an ownerReference: both refuse it before any call.
    api = k8s_cluster.core_v1()
    namespace = k8s_cluster.create_namespace()
    for half in (("server-1", None), (None, "uid-1")):
        with pytest.raises(ValueError, match="pass both owner_pod_name and owner_pod_uid"):
            create_run_token_secret(api, namespace, new_run_id(), *half)
        with pytest.raises(ValueError, match="pass both owner_pod_name and owner_pod_uid"):
            create_run_service(api, namespace, new_run_id(), 8080, *half)
    assert api.list_namespaced_secret(namespace, label_selector=RUN_ID_LABEL).items == []
    assert api.list_namespaced_service(namespace).items == []
