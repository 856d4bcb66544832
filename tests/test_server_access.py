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
from fl_kubeflow.kube.credential_secrets import create_secret, registry_secret_body
from fl_kubeflow.kube.service import NODE_IP_ENV
from fl_kubeflow.tasks import ClientTaskError, join_federation, run_server_task
from fl_kubeflow.tasks.server_access import AccessError, RegistrySync, registry_sync, tls_files
from tests.k8s_cluster import K8sCluster  # the k8s_cluster fixture comes from conftest.py
from tests.ports import free_port
from tests.test_kube_service import api_status, fake_token_dir, new_run_id, wait_for

REGISTRY_SECRET = "fl-credential-registry"
TIMEOUT = 60.0


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


def test_server_task_serves_its_registry_on_a_node_port_and_writes_the_address(
    k8s_cluster: K8sCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = k8s_cluster.create_namespace()
    admin = k8s_cluster.core_v1()
    registry, credentials = issue_many(["hospital-a", "bank-b"])
    create_secret(admin, namespace, registry_secret_body(REGISTRY_SECRET, registry))
    folders = [
        write_credential_dir(c, tmp_path / c.client_id, server=f"http://127.0.0.1:{port}")
        for c, port in zip(credentials, [free_port()] * 2, strict=True)
    ]
    port = int((folders[0] / "server").read_text().rsplit(":", 1)[1])
    rogue = write_credential_dir(issue("hospital-a"), tmp_path / "rogue")  # not enrolled
    monkeypatch.setenv(NODE_IP_ENV, "192.0.2.7")
    run_id = new_run_id()
    address = tmp_path / "out" / "server_address"
    outcome: dict[str, Any] = {}

    def serve() -> None:
        try:
            outcome["result"] = run_server_task(
                run_id=run_id,
                num_clients=2,
                num_rounds=2,
                model_dir=tmp_path / "model",
                join_timeout=TIMEOUT,
                round_timeout=TIMEOUT,
                port=port,
                trainer="numpy:delta",
                service_name="fl-server",
                service_type="NodePort",
                allow_plaintext=True,
                credentials_secret=REGISTRY_SECRET,
                credentials_reload=0.5,
                summary_path=tmp_path / "out" / "summary.md",
                address_path=address,
                token_dir=fake_token_dir(tmp_path / "sa", "unused", namespace),
                core_v1_api=admin,
            )
        except Exception as exc:  # reported by the assertions below
            outcome["error"] = exc

    server = threading.Thread(target=serve)
    server.start()
    node_port = wait_for(
        "the NodePort Service",
        lambda: (
            api_status(lambda: admin.read_namespaced_service("fl-server", namespace)) == 200
            and admin.read_namespaced_service("fl-server", namespace).spec.ports[0].node_port
        ),
    )

    def client(folder: Path, delta: float) -> Any:
        return join_federation(
            DeltaTrainer(delta=delta, num_examples=1),
            run_id=run_id,
            client_id=0,  # the credential's id wins
            retry_timeout=TIMEOUT,
            round_wait_timeout=TIMEOUT,
            credential_dir=folder,
            token_dir=tmp_path / "no-pod",
        )

    # Unknown token: refused, and the run still waits for its two clients.
    with pytest.raises(ClientTaskError, match="401"):
        join_federation(
            DeltaTrainer(),
            run_id=run_id,
            client_id=0,
            server_address=f"http://127.0.0.1:{port}",
            retry_timeout=TIMEOUT,
            credential_dir=rogue,
            token_dir=tmp_path / "no-pod",
        )
    results: dict[str, Any] = {}
    clients = [
        threading.Thread(target=lambda f=f, d=d: results.update({f.name: client(f, d)}))
        for f, d in zip(folders, (1.0, 3.0), strict=True)
    ]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(TIMEOUT * 3)
    server.join(TIMEOUT * 3)
    assert "error" not in outcome, outcome.get("error")
    history = outcome["result"].history
    assert history["status"] == "finished"
    assert sorted(history["clients"]) == ["bank-b", "hospital-a"]
    assert sorted(results) == ["bank-b", "hospital-a"]
    assert address.read_text() == f"http://192.0.2.7:{node_port}"
    assert f"`http://192.0.2.7:{node_port}`" in (tmp_path / "out" / "summary.md").read_text()
    # The server deleted its Service at the end; no token is in what it wrote.
    assert api_status(lambda: admin.read_namespaced_service("fl-server", namespace)) == 404
    written = json.dumps(history) + address.read_text()
    assert not any(c.token in written for c in credentials)


def test_server_task_refuses_a_node_port_without_tls_before_making_anything(
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
