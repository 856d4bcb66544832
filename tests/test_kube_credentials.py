"""Per-client credential Secrets and the registry Secret, against a real kube-apiserver."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fl_kubeflow.credentials import CA_KEY, SERVER_KEY, Registry, issue, issue_many
from fl_kubeflow.kube import KubernetesPermissionError
from fl_kubeflow.kube.credential_secrets import (
    REGISTRY_KEY,
    cleanup_run_credentials,
    create_secret,
    credential_secret_body,
    fetch_run_credential,
    publish_run_credentials,
    read_credential_secret,
    read_registry_secret,
    read_secret_data,
    registry_secret_body,
    run_credential_secret_name,
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
IDS = ["0", "1", "2"]


def test_server_makes_one_secret_per_client_and_each_reads_its_own(
    k8s_cluster: K8sCluster, tmp_path: Path
) -> None:
    namespace = k8s_cluster.create_namespace()
    run_id = new_run_id()
    pod = create_pod(k8s_cluster, namespace, "server-a", server_labels(run_id))
    server_sa = grant(k8s_cluster, namespace, "server-sa", SERVER_RULES)
    client_sa = grant(k8s_cluster, namespace, "client-sa", [("secrets", ["get"])])
    server_dir = fake_token_dir(tmp_path / "server", server_sa, namespace)
    client_dir = fake_token_dir(tmp_path / "client", client_sa, namespace)
    client_api = k8s_cluster.core_v1(client_sa)

    fetched = {}
    # A client that starts first waits for its Secret.
    waiter = threading.Thread(
        target=lambda: fetched.update(
            one=fetch_run_credential(
                run_id, "1", timeout=30, token_dir=client_dir, environ={}, core_v1_api=client_api
            )
        )
    )
    waiter.start()
    registry = publish_run_credentials(
        run_id,
        IDS,
        token_dir=server_dir,
        environ={"KFP_POD_NAME": "server-a"},
        core_v1_api=k8s_cluster.core_v1(server_sa),
    )
    waiter.join(40)
    assert registry is not None and registry.clients() == IDS
    one = fetched["one"]
    assert one.client_id == "1" and len(one.token) >= 43
    assert registry.identify(one.token).name == "1"
    credentials = [
        fetch_run_credential(run_id, i, token_dir=client_dir, environ={}, core_v1_api=client_api)
        for i in IDS
    ]
    assert [registry.identify(c.token).name for c in credentials] == IDS
    assert len({c.token for c in credentials}) == 3
    for client_id in IDS:
        secret = k8s_cluster.core_v1().read_namespaced_secret(
            run_credential_secret_name(run_id, client_id), namespace
        )
        assert [ref.uid for ref in secret.metadata.owner_references] == [pod.metadata.uid]
        assert secret.metadata.labels["pipeline/runid"] == run_id

    # A restarted server finds the Secrets and keeps the tokens the clients hold.
    again = publish_run_credentials(
        run_id,
        IDS,
        token_dir=server_dir,
        environ={"KFP_POD_NAME": "server-a"},
        core_v1_api=k8s_cluster.core_v1(server_sa),
    )
    assert again is not None and again.to_json() == registry.to_json()

    # The Secrets go with the server pod.
    delete_pod_now(k8s_cluster, namespace, "server-a")

    def gone() -> bool:
        names = {
            s.metadata.name for s in k8s_cluster.core_v1().list_namespaced_secret(namespace).items
        }
        return not names & {run_credential_secret_name(run_id, i) for i in IDS}

    wait_for("the credential Secrets to be garbage-collected", gone)


def test_cleanup_deletes_them_idempotently_and_reading_times_out(
    k8s_cluster: K8sCluster, tmp_path: Path
) -> None:
    namespace = k8s_cluster.create_namespace()
    run_id = new_run_id()
    admin = k8s_cluster.core_v1()
    token_dir = fake_token_dir(tmp_path / "sa", "unused", namespace)
    publish_run_credentials(run_id, IDS, token_dir=token_dir, environ={}, core_v1_api=admin)
    assert cleanup_run_credentials(run_id, IDS, token_dir=token_dir, core_v1_api=admin) == 3
    assert cleanup_run_credentials(run_id, IDS, token_dir=token_dir, core_v1_api=admin) == 0
    with pytest.raises(TimeoutError, match="did not appear"):
        fetch_run_credential(run_id, "0", timeout=0.5, token_dir=token_dir, core_v1_api=admin)
    # Outside a pod nothing is made.
    assert publish_run_credentials(run_id, IDS, token_dir=tmp_path / "none", environ={}) is None


def test_a_client_secret_is_a_credential_folder_and_the_registry_secret_reads_back(
    k8s_cluster: K8sCluster,
) -> None:
    namespace = k8s_cluster.create_namespace()
    admin = k8s_cluster.core_v1()
    credential = issue("hospital-a")
    body = credential_secret_body(
        "fl-credential-hospital-a", credential, ca_pem="PEM", server="https://fl.example:8443"
    )
    assert create_secret(admin, namespace, body) is True
    assert create_secret(admin, namespace, body) is False  # exists: left as it is
    data = read_secret_data(admin, namespace, "fl-credential-hospital-a")
    assert data == {
        "client_id": "hospital-a",
        "token": credential.token,
        CA_KEY: "PEM",
        SERVER_KEY: "https://fl.example:8443",
    }
    assert read_credential_secret(admin, namespace, "fl-credential-hospital-a") == credential

    registry, credentials = issue_many(["a", "b"])
    registry = registry.revoke("b")
    create_secret(admin, namespace, registry_secret_body("fl-registry", registry))
    loaded = read_registry_secret(admin, namespace, "fl-registry")
    assert isinstance(loaded, Registry) and loaded.to_json() == registry.to_json()
    assert loaded.identify(credentials[0].token).name == "a" and loaded.is_revoked("b")
    assert REGISTRY_KEY in read_secret_data(admin, namespace, "fl-registry")
    # The registry holds digests only: no token is in it.
    assert not any(
        c.token in read_secret_data(admin, namespace, "fl-registry")[REGISTRY_KEY]
        for c in credentials
    )


def test_a_client_without_get_on_secrets_is_told_which_verb(
    k8s_cluster: K8sCluster, tmp_path: Path
) -> None:
    namespace = k8s_cluster.create_namespace()
    token = grant(k8s_cluster, namespace, "no-secrets", [("services", ["get"])])
    token_dir = fake_token_dir(tmp_path / "sa", token, namespace)
    with pytest.raises(KubernetesPermissionError, match="'get' 'secrets'"):
        fetch_run_credential(
            new_run_id(),
            "0",
            token_dir=token_dir,
            environ={},
            core_v1_api=k8s_cluster.core_v1(token),
        )
