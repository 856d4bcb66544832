"""The server task across silos: TLS required beyond ClusterIP, the registry Secret kept in sync,
and a whole server-pipeline task against a real kube-apiserver with per-client credentials.

The server task runs in this process as in its pod (a fake service-account folder, the
envtest API client); its federation runs in a real child server process on loopback, and
the clients are ``join_federation`` with their own credential folders, as the client
pipeline's mounted Secrets give them.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from fl_kubeflow.client.numpy_trainers import DeltaTrainer
from fl_kubeflow.credentials import Registry, issue, issue_many, write_credential_dir
from fl_kubeflow.kube.credential_secrets import (
    cleanup_run_credentials,
    create_secret,
    fetch_run_credential,
    registry_secret_body,
    run_credential_secret_name,
)
from fl_kubeflow.kube.service import NODE_IP_ENV
from fl_kubeflow.tasks import ClientTaskError, join_federation, run_server_task
from fl_kubeflow.tasks.server_access import AccessError, RegistrySync, registry_sync, tls_files
from tests.k8s_cluster import K8sCluster  # the k8s_cluster fixture comes from conftest.py
from tests.ports import free_port
from tests.test_kube_service import api_status, fake_token_dir, new_run_id, wait_for
from tests.test_tls import make_certificates

REGISTRY_SECRET = "fl-credential-registry"
TIMEOUT = 60.0


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    try:
        return make_certificates(tmp_path / "pki")
    except FileNotFoundError:
        pytest.skip("openssl is not installed: cannot make test certificates")


def test_tls_is_required_beyond_cluster_ip_unless_plaintext_is_allowed(tmp_path: Path) -> None:
    assert tls_files(None, "ClusterIP") is None
    assert tls_files(tmp_path / "absent", "ClusterIP") is None
    for exposed in ("NodePort", "LoadBalancer"):
        with pytest.raises(AccessError, match=f"a {exposed} Service .* TLS is required"):
            tls_files(tmp_path / "absent", exposed, tls_secret="fl-server-tls")
        assert tls_files(tmp_path, exposed, allow_plaintext=True) is None
    (tmp_path / "tls.crt").write_text("CERT")
    with pytest.raises(AccessError, match=r"needs both tls\.crt and tls\.key"):
        tls_files(tmp_path, "NodePort")
    (tmp_path / "tls.key").write_text("KEY")
    assert tls_files(tmp_path, "NodePort") == (tmp_path / "tls.crt", tmp_path / "tls.key")
    with pytest.raises(AccessError, match="service_type must be one of"):
        tls_files(tmp_path, "ExternalName")


@pytest.mark.k8s
def test_a_revoked_registry_secret_reaches_the_file_and_a_bad_one_keeps_the_last(
    k8s_cluster: K8sCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    namespace = k8s_cluster.create_namespace()
    admin = k8s_cluster.core_v1()
    registry, _ = issue_many(["a", "b"])
    create_secret(admin, namespace, registry_secret_body(REGISTRY_SECRET, registry))
    token_dir = fake_token_dir(tmp_path / "sa", "unused", namespace)
    path = tmp_path / "registry.json"
    # An interval long enough that only sync_once acts within the test.
    sync = registry_sync(REGISTRY_SECRET, path, 3600.0, token_dir=token_dir, core_v1_api=admin)
    with sync:
        assert Registry.load(path).to_json() == registry.to_json()
        assert sync.sync_once() is False  # unchanged: the file is not rewritten
        revoked = registry.revoke("b")
        admin.replace_namespaced_secret(
            REGISTRY_SECRET, namespace, registry_secret_body(REGISTRY_SECRET, revoked)
        )
        assert sync.sync_once() is True
        assert Registry.load(path).is_revoked("b")
        admin.patch_namespaced_secret(
            REGISTRY_SECRET, namespace, {"stringData": {"registry.json": "{not json"}}
        )
        with caplog.at_level(logging.WARNING, logger="fl_kubeflow.tasks.server"):
            assert sync.sync_once() is False
            assert sync.sync_once() is False
        assert Registry.load(path).is_revoked("b")  # the last good one stays
        assert len([r for r in caplog.records if "cannot read registry" in r.message]) == 1
    with pytest.raises(AccessError, match="not a pod"):
        registry_sync(REGISTRY_SECRET, path, 2.0, token_dir=tmp_path / "none")
    with pytest.raises(ValueError, match="credentials_reload must be positive"):
        RegistrySync(lambda: registry, path, 0)


class ServerTask:
    """``run_server_task`` in a thread, as in its pod: a fake service account, envtest API."""

    def __init__(self, tmp_path: Path, namespace: str, admin: Any, **options: Any) -> None:
        self.run_id = new_run_id()
        self.port = free_port()
        self.address = tmp_path / "out" / "server_address"
        self.summary = tmp_path / "out" / "summary.md"
        self.outcome: dict[str, Any] = {}
        kwargs = dict(
            run_id=self.run_id,
            num_clients=2,
            num_rounds=2,
            model_dir=tmp_path / "model",
            join_timeout=TIMEOUT,
            round_timeout=TIMEOUT,
            port=self.port,
            trainer="numpy:delta",
            summary_path=self.summary,
            address_path=self.address,
            token_dir=fake_token_dir(tmp_path / "sa", "unused", namespace),
            core_v1_api=admin,
            **options,
        )
        self.thread = threading.Thread(target=self._serve, args=(kwargs,))
        self.thread.start()

    def _serve(self, kwargs: dict[str, Any]) -> None:
        try:
            self.outcome["result"] = run_server_task(**kwargs)
        except Exception as exc:  # reported by result()
            self.outcome["error"] = exc

    def result(self) -> Any:
        self.thread.join(TIMEOUT * 3)
        assert "error" not in self.outcome, self.outcome.get("error")
        return self.outcome["result"]


def join(run_id: str, folder: Path, tmp_path: Path, delta: float = 1.0, **options: Any) -> Any:
    """A client known by the credential in ``folder``, as the client pipeline runs it."""
    return join_federation(
        DeltaTrainer(delta=delta, num_examples=1),
        run_id=run_id,
        client_id=0,  # the credential's id wins
        retry_timeout=TIMEOUT,
        round_wait_timeout=TIMEOUT,
        credential_dir=folder,
        token_dir=tmp_path / "no-pod",
        **options,
    )


def run_clients(run_id: str, folders: list[Path], tmp_path: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    threads = [
        threading.Thread(
            target=lambda f=f, d=d: results.update({f.name: join(run_id, f, tmp_path, d)})
        )
        for f, d in zip(folders, (1.0, 3.0), strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 3)
    return results


@pytest.mark.k8s
def test_server_task_serves_its_registry_on_a_node_port_and_writes_the_address(
    k8s_cluster: K8sCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    namespace = k8s_cluster.create_namespace()
    admin = k8s_cluster.core_v1()
    registry, credentials = issue_many(["hospital-a", "bank-b"])
    create_secret(admin, namespace, registry_secret_body(REGISTRY_SECRET, registry))
    monkeypatch.setenv(NODE_IP_ENV, "192.0.2.7")
    task = ServerTask(
        tmp_path,
        namespace,
        admin,
        service_name="fl-server",
        service_type="NodePort",
        allow_plaintext=True,
        credentials_secret=REGISTRY_SECRET,
        credentials_reload=0.5,
    )
    local = f"http://127.0.0.1:{task.port}"
    folders = [write_credential_dir(c, tmp_path / c.client_id, server=local) for c in credentials]
    rogue = write_credential_dir(issue("hospital-a"), tmp_path / "rogue")  # not enrolled
    node_port = wait_for(
        "the NodePort Service",
        lambda: (
            api_status(lambda: admin.read_namespaced_service("fl-server", namespace)) == 200
            and admin.read_namespaced_service("fl-server", namespace).spec.ports[0].node_port
        ),
    )
    # Unknown token: refused, and the run still waits for its two clients.
    with pytest.raises(ClientTaskError, match="401"):
        join(task.run_id, rogue, tmp_path, server_address=local)
    results = run_clients(task.run_id, folders, tmp_path)
    history = task.result().history
    assert history["status"] == "finished"
    assert sorted(history["clients"]) == sorted(results) == ["bank-b", "hospital-a"]
    assert task.address.read_text() == f"http://192.0.2.7:{node_port}"
    assert f"`http://192.0.2.7:{node_port}`" in task.summary.read_text()
    # The server deleted its Service at the end; no token is in what it wrote.
    assert api_status(lambda: admin.read_namespaced_service("fl-server", namespace)) == 404
    written = json.dumps(history) + task.address.read_text() + task.summary.read_text()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"http://192.0.2.7:{node_port}" in logged  # the address is in the log
    assert not any(c.token in written + logged for c in credentials)


@pytest.mark.k8s
def test_all_in_one_server_task_issues_a_secret_per_client_and_serves_tls(
    k8s_cluster: K8sCluster, tmp_path: Path, certs: dict[str, Path]
) -> None:
    namespace = k8s_cluster.create_namespace()
    admin = k8s_cluster.core_v1()
    tls = tmp_path / "tls"  # what the mounted kubernetes.io/tls Secret shows
    tls.mkdir()
    (tls / "tls.crt").write_bytes(certs["server.crt"].read_bytes())
    (tls / "tls.key").write_bytes(certs["server.key"].read_bytes())
    task = ServerTask(tmp_path, namespace, admin, tls_dir=tls)
    folders = []
    for client_id in ("0", "1"):
        # What each client pod reads through the API: its own Secret.
        credential = fetch_run_credential(
            task.run_id, client_id, timeout=TIMEOUT, token_dir=tmp_path / "sa", core_v1_api=admin
        )
        assert credential is not None and credential.client_id == client_id
        folders.append(
            write_credential_dir(
                credential,
                tmp_path / client_id,
                ca_pem=certs["ca.crt"].read_text(),
                server=f"https://127.0.0.1:{task.port}",
            )
        )
    results = run_clients(task.run_id, folders, tmp_path)
    history = task.result().history
    assert history["status"] == "finished" and sorted(results) == ["0", "1"]
    assert task.address.read_text() == (f"https://fl-{task.run_id}.{namespace}.svc:{task.port}")
    names = [run_credential_secret_name(task.run_id, i) for i in ("0", "1")]
    assert all(
        api_status(lambda n=n: admin.read_namespaced_secret(n, namespace)) == 200 for n in names
    )
    # The exit handler's cleanup deletes them.
    ids = ["0", "1"]
    assert (
        cleanup_run_credentials(task.run_id, ids, token_dir=tmp_path / "sa", core_v1_api=admin) == 2
    )


@pytest.mark.k8s
def test_server_task_refuses_no_tls_beyond_cluster_ip_or_no_registry_before_making_anything(
    k8s_cluster: K8sCluster, tmp_path: Path
) -> None:
    from fl_kubeflow.tasks import ServerTaskError

    namespace = k8s_cluster.create_namespace()
    admin = k8s_cluster.core_v1()
    with pytest.raises(ServerTaskError, match="TLS is required"):
        run_server_task(
            run_id=new_run_id(),
            num_clients=1,
            num_rounds=1,
            model_dir=tmp_path / "model",
            service_type="LoadBalancer",
            tls_dir=tmp_path / "no-tls",
            tls_secret="fl-server-tls",
            credentials_secret=REGISTRY_SECRET,
            token_dir=fake_token_dir(tmp_path / "sa", "unused", namespace),
            core_v1_api=admin,
        )
    assert admin.list_namespaced_service(namespace).items == []
    # A registry Secret that is not there: refused by name, before the Service exists.
    with pytest.raises(ServerTaskError, match=f"no registry Secret {namespace}/{REGISTRY_SECRET}"):
        run_server_task(
            run_id=new_run_id(),
            num_clients=1,
            num_rounds=1,
            model_dir=tmp_path / "model",
            credentials_secret=REGISTRY_SECRET,
            token_dir=fake_token_dir(tmp_path / "sa", "unused", namespace),
            core_v1_api=admin,
        )
    assert admin.list_namespaced_service(namespace).items == []


def test_a_credential_client_needs_an_address_and_never_guesses_the_run_service(
    tmp_path: Path,
) -> None:
    folder = write_credential_dir(issue("hospital-a"), tmp_path / "cred")  # no server key
    with pytest.raises(ClientTaskError, match="no server address: set server_address"):
        join(new_run_id(), folder, tmp_path)
    (folder / "token").write_text("")
    with pytest.raises(ClientTaskError, match="bad client_id or empty token"):
        join(new_run_id(), folder, tmp_path, server_address="http://127.0.0.1:1")
