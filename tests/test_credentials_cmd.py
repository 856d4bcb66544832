"""``fl-kubeflow credentials issue / revoke / list``: files, Secret manifests, the API.

The command runs as users run it (``python -m fl_kubeflow``); what it writes is read back
with the functions the server and the clients use (``Registry.load``,
``open_credential_dir``), and its Secrets are applied to a real kube-apiserver.
"""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from fl_kubeflow.credentials import Registry, open_credential_dir, token_digest
from tests.fl_processes import run_cli
from tests.k8s_cluster import K8sCluster  # the k8s_cluster fixture comes from conftest.py

CA = "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n"


def credentials(*args: str | Path) -> tuple[int, str, str]:
    done = run_cli("credentials", *(str(a) for a in args), timeout=60)
    return done.returncode, done.stdout, done.stderr


def issue(tmp_path: Path, *args: str | Path) -> tuple[int, str, str]:
    registry, out = tmp_path / "registry.json", tmp_path / "out"
    return credentials("issue", "--registry", registry, "--out", out, *args)


def test_issue_writes_folders_manifests_and_a_registry_of_digests(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text(CA)
    code, stdout, stderr = issue(
        tmp_path,
        *("hospital-a", "Bank_B", "--max-examples", "5000", "--ca", tmp_path / "ca.pem"),
        *("--server", "https://fl.example:8443", "--secret-manifests"),
    )
    assert code == 0, stderr
    registry = Registry.load(tmp_path / "registry.json")
    assert registry.clients() == ["Bank_B", "hospital-a"]
    out = tmp_path / "out"
    manifests = {p.name: json.loads(p.read_text()) for p in (out / "secrets").iterdir()}
    assert sorted(manifests) == [
        "fl-credential-bank-b.json",
        "fl-credential-hospital-a.json",
        "fl-credential-registry.json",
    ]
    for client_id, secret in (
        ("hospital-a", "fl-credential-hospital-a.json"),
        ("Bank_B", "fl-credential-bank-b.json"),
    ):
        folder = open_credential_dir(out / client_id)
        assert folder.credential.client_id == client_id
        assert folder.server == "https://fl.example:8443"
        assert folder.ca_file is not None and folder.ca_file.read_text() == CA
        enrolment = registry.enrolments[client_id]
        assert enrolment.digest == token_digest(folder.credential.token)
        assert enrolment.max_examples == 5000
        # The Secret has the folder's keys and values: mounted, it is the folder.
        manifest = manifests[secret]
        assert (manifest["apiVersion"], manifest["kind"], manifest["type"]) == (
            "v1",
            "Secret",
            "Opaque",
        )
        assert "namespace" not in manifest["metadata"]  # each owner applies it where they run
        files = {p.name: p.read_text() for p in (out / client_id).iterdir()}
        assert manifest["stringData"] == files
        for path in [*(out / client_id).iterdir(), out / "secrets" / secret]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert folder.credential.token not in stdout + stderr
    registry_secret = manifests["fl-credential-registry.json"]["stringData"]["registry.json"]
    assert Registry.from_json(json.loads(registry_secret)) == registry
    assert "token" not in registry_secret.replace("token_sha256", "")


def test_issue_extends_the_registry_and_refuses_enrolled_or_clashing_ids(tmp_path: Path) -> None:
    assert issue(tmp_path, "a")[0] == 0
    assert issue(tmp_path, "progress", "--role", "observer")[0] == 0
    before = (tmp_path / "registry.json").read_text()
    token = (tmp_path / "out" / "a" / "token").read_text()
    code, _, stderr = issue(tmp_path, "b", "a")
    assert code == 2 and "'a' is enrolled already" in stderr
    code, _, stderr = issue(tmp_path, "c_1", "c-1", "--secret-name-format", "cred-{client_id}")
    assert code == 2 and "clashing Secret names" in stderr
    # Nothing changed: not the registry, not a's credential, no folder for b.
    assert (tmp_path / "registry.json").read_text() == before
    assert (tmp_path / "out" / "a" / "token").read_text() == token
    assert not (tmp_path / "out" / "b").exists()
    registry = Registry.load(tmp_path / "registry.json")
    assert (registry.clients(), registry.enrolments["progress"].role) == (["a"], "observer")


def test_revoke_and_list(tmp_path: Path) -> None:
    assert issue(tmp_path, "a", "b", "--max-examples", "7")[0] == 0
    registry = tmp_path / "registry.json"
    manifest = tmp_path / "registry-secret.json"
    code, _, stderr = credentials(
        "revoke", "--registry", registry, "b", "--registry-manifest", manifest
    )
    assert code == 0, stderr
    assert Registry.load(registry).revoked == {"b"}
    applied = json.loads(manifest.read_text())["stringData"]["registry.json"]
    assert Registry.from_json(json.loads(applied)).revoked == {"b"}
    code, stdout, _ = credentials("list", "--registry", registry, "--json")
    assert code == 0
    assert json.loads(stdout) == {
        "a": {"role": "client", "max_examples": 7, "revoked": False},
        "b": {"role": "client", "max_examples": 7, "revoked": True},
    }
    code, stdout, _ = credentials("list", "--registry", registry)
    assert code == 0 and "yes" in stdout.splitlines()[2] and "sha" not in stdout
    code, _, stderr = credentials("revoke", "--registry", registry, "nobody")
    assert code == 2 and "'nobody' is not enrolled" in stderr


@pytest.mark.k8s
def test_secrets_are_created_then_replaced_through_the_api(
    k8s_cluster: K8sCluster, tmp_path: Path
) -> None:
    namespace = k8s_cluster.create_namespace()
    kube = ("--kube-namespace", namespace, "--kubeconfig", str(k8s_cluster.kubeconfig))
    code, _, stderr = issue(tmp_path, "a", "b", *kube)
    assert code == 0, stderr
    api = k8s_cluster.core_v1()

    def data(name: str) -> dict[str, str]:
        secret = api.read_namespaced_secret(name, namespace)
        return {k: base64.b64decode(v).decode() for k, v in secret.data.items()}

    assert data("fl-credential-a") == {
        p.name: p.read_text() for p in (tmp_path / "out" / "a").iterdir()
    }
    code, _, stderr = credentials("revoke", "--registry", tmp_path / "registry.json", "a", *kube)
    assert code == 0, stderr
    registry = Registry.from_json(json.loads(data("fl-credential-registry")["registry.json"]))
    assert registry.revoked == {"a"} and registry.clients() == ["a", "b"]
