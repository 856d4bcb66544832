"""A cross-silo federation on the one-node cluster (issue 15, item 4).

The server pipeline (``fl_server_pipeline.yaml``) runs in namespace A with the registry
Secret that ``fl-kubeflow credentials issue --secret-manifests`` wrote and TLS from a
``kubernetes.io/tls`` Secret (a self-signed CA and a server certificate for the Service's
DNS names and the node IP, made here); its Service is a NodePort, so it is reachable both
as ``fl-server.<A>.svc`` from other namespaces and at the node IP from outside the cluster
(the test process). Client pipelines (``fl_client_pipeline.yaml``) run in namespaces B and
C, each with its own credential Secret applied in its own namespace only, as service
accounts with no Role anywhere; B passes the server address, C takes it from its
credential's ``server`` key.

A rogue client, enrolled as a third client whose credential Secret is in C, is a plain Pod
of the project's image (``rogue_client.py``) under C's account: it cannot list A's Secrets,
is refused with an unknown token (401) and under B's id with its own token (403), joins,
and is revoked during round 1 by ``fl-kubeflow credentials revoke`` replacing the registry
Secret in A; its later requests get 401 ``revoked`` and round 1 closes with the quorum of
the other two, before the round timeout.

One run does both the refusals and the equality, to keep the test lean: the rogue never
sends an update, so B's and C's clients are the contributors of every round, and the final
model must equal (bitwise, else to 1e-6) that of the all-in-one pipeline
(``fl_pipeline.yaml``), run at the same time in a fourth namespace on the same data and seed.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from fl_kubeflow.cli.credential_manifests import credential_secret_name
from fl_kubeflow.cli.credentials_cmd import SECRETS_FOLDER
from tests.e2e.cross_silo import make_tls, service_dns_names, start_rogue_pod
from tests.e2e.images import BRIDGE_IP
from tests.e2e.kfp_ir import PipelineIR
from tests.e2e.kfp_retry import SUCCEEDED
from tests.e2e.kfp_runner import RunResult, wait_until
from tests.e2e.pipeline_env import (
    BASE_ARGUMENTS,
    FAULT_TIMEOUT,
    SETUP_TIMEOUT,
    Env,
    check_default_run,
    compile_for,
    history,
    make_env,
    server_outputs,
)

CLIENT_ACCOUNT = "data-owner"  # the client namespaces' run account: no Role anywhere
SILOS = {"b": "silo-b", "c": "silo-c"}  # namespace key -> client id
SHARDS = {"silo-b": 0, "silo-c": 1}  # the all-in-one run's clients 0 and 1 train on these
ROGUE = "rogue-c"
SERVICE = "fl-server"  # the server pipeline's default service_name
PORT = 8080
REGISTRY_SECRET = "fl-registry"
TLS_SECRET = "fl-server-tls"
SERVER_PIPELINE = "fl_server_pipeline.yaml"
CLIENT_PIPELINE = "fl_client_pipeline.yaml"


def _cli(*args: str) -> str:
    """``fl-kubeflow ARGS`` as an operator runs it; its output."""
    done = subprocess.run(
        [sys.executable, "-m", "fl_kubeflow", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _manifest(out: Path, name: str, namespace: str) -> dict[str, Any]:
    """A Secret manifest that ``credentials issue --secret-manifests`` wrote, for ``namespace``."""
    manifest = json.loads((out / SECRETS_FOLDER / f"{name}.json").read_text())
    manifest["metadata"]["namespace"] = namespace
    return manifest


def _weights(result: RunResult) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    _, model_dir = server_outputs(result)
    return load_file(str(model_dir / "weights.safetensors"))


def _assert_same_weights(final: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(final) == sorted(expected)
    differ = []
    for name, value in expected.items():
        assert final[name].shape == value.shape, name
        if not np.array_equal(final[name], value):
            np.testing.assert_allclose(final[name], value, rtol=0, atol=1e-6, err_msg=name)
            differ.append(name)
    print(f"final weights: {len(expected) - len(differ)} tensors bitwise equal, {differ} to 1e-6")


def _node_port(core: Any, namespace: str) -> int:
    def probe() -> int | None:
        try:
            service = core.read_namespaced_service(SERVICE, namespace)
        except Exception:  # not created yet
            return None
        return service.spec.ports[0].node_port

    return wait_until(probe, SETUP_TIMEOUT, f"Service {namespace}/{SERVICE} and its node port")


def test_cross_namespace_federation_with_per_client_credentials_tls_and_revocation(
    node_cluster, tmp_path
):
    all_in_one = compile_for(node_cluster.image, tmp_path / "fl_pipeline.yaml")
    server_ir = PipelineIR.load(tmp_path / SERVER_PIPELINE)
    client_ir = PipelineIR.load(tmp_path / CLIENT_PIPELINE)
    envs = [make_env(node_cluster, all_in_one, "ref"), make_env(node_cluster, server_ir, "silo-a")]
    try:
        for key in SILOS:
            envs.append(
                make_env(
                    node_cluster, client_ir, f"silo-{key}", account=CLIENT_ACCOUNT, with_role=False
                )
            )
        reference, server, *silos = envs
        _scenario(node_cluster, tmp_path, reference, server, dict(zip(SILOS, silos, strict=True)))
    finally:
        for env in envs:
            node_cluster.delete_namespace(env.namespace)


def _scenario(
    cluster: Any, tmp_path: Path, reference_env: Env, server_env: Env, silo_envs: dict[str, Env]
) -> None:
    core = cluster.core_v1()
    a = server_env.namespace
    address = f"https://{SERVICE}.{a}.svc:{PORT}"
    tls = make_tls(service_dns_names(SERVICE, a), (BRIDGE_IP,))
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text(tls.ca_pem)

    # The server's operator issues the credentials and hands each Secret to its owner.
    out, registry = tmp_path / "credentials", tmp_path / "registry.json"
    _cli(
        "credentials", "issue", "--registry", str(registry), "--out", str(out),
        "--ca", str(ca_file), "--server", address, "--secret-manifests",
        "--registry-secret", REGISTRY_SECRET, *SILOS.values(), ROGUE,
    )  # fmt: skip
    core.create_namespaced_secret(a, _manifest(out, REGISTRY_SECRET, a))
    core.create_namespaced_secret(
        a,
        {
            "metadata": {"name": TLS_SECRET},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": tls.cert_pem, "tls.key": tls.key_pem},
        },
    )
    secrets = {c: credential_secret_name(c) for c in [*SILOS.values(), ROGUE]}
    owners = {c: silo_envs[k].namespace for k, c in SILOS.items()}
    owners[ROGUE] = silo_envs["c"].namespace  # the rogue's own, in C only
    for client_id, namespace in owners.items():
        core.create_namespaced_secret(namespace, _manifest(out, secrets[client_id], namespace))

    reference = reference_env.runner().start(BASE_ARGUMENTS)
    server_run = server_env.runner().start(
        {
            **{k: v for k, v in BASE_ARGUMENTS.items() if k != "num_clients"},
            "num_clients": len(SILOS) + 1,
            "min_clients": len(SILOS),
            "service_type": "NodePort",
            "tls_secret": TLS_SECRET,
            "credentials_secret": REGISTRY_SECRET,
            "credentials_reload": 1.0,
        }
    )
    client_runs = {
        client_id: silo_envs[key]
        .runner()
        .start(
            {
                "credential_secret": secrets[client_id],
                # B is told the address; C's client takes its credential's server key.
                "server_address": address if key == "b" else "",
                "shard": SHARDS[client_id],
                "num_shards": BASE_ARGUMENTS["num_clients"],
                "dataset": BASE_ARGUMENTS["dataset"],
                "seed": BASE_ARGUMENTS["seed"],
            }
        )
        for key, client_id in SILOS.items()
    }
    rogue = start_rogue_pod(
        core,
        namespace=silo_envs["c"].namespace,
        image=cluster.image,
        credential_secret=secrets[ROGUE],
        server=address,
        impersonate=SILOS["b"],
        foreign_namespace=a,
        revocation_timeout=FAULT_TIMEOUT,
        wait_submitted=len(SILOS),
        service_account=CLIENT_ACCOUNT,
    )

    joined = rogue.wait_for("join", FAULT_TIMEOUT)
    assert joined["status"] == 200, rogue.log()
    # Round 1 has B's and C's updates and waits for the rogue's: only the revocation (or
    # the round timeout) can close it now.
    waiting = rogue.wait_for("round_waiting", FAULT_TIMEOUT)
    assert waiting["submitted"] == sorted(SILOS.values()), waiting
    # From outside the cluster: the node IP and the node port, the CA verifying the server.
    node_address = f"https://{BRIDGE_IP}:{_node_port(core, a)}"
    context = ssl.create_default_context(cafile=str(ca_file))
    with urllib.request.urlopen(f"{node_address}/healthz", timeout=30, context=context) as answer:
        assert answer.status == 200
    _cli(
        "credentials", "revoke", "--registry", str(registry), "--registry-secret",
        REGISTRY_SECRET, "--kube-namespace", a, "--kubeconfig", str(cluster.kubeconfig), ROGUE,
    )  # fmt: skip
    revoked = rogue.wait_for("revoked", FAULT_TIMEOUT)

    served = server_run.wait()
    clients = {client_id: run.wait() for client_id, run in client_runs.items()}
    expected = reference.wait()
    records, rogue_log = rogue.records(), rogue.log()

    assert records["foreign_secrets"]["status"] == 403, rogue_log  # no rights in A
    unknown = records["unknown_token"]
    assert (unknown["status"], unknown["error"]) == (401, "unauthorized"), rogue_log
    for probe in ("impersonate_join", "impersonate_update"):
        assert (records[probe]["status"], records[probe]["error"]) == (403, "forbidden"), rogue_log
    assert (revoked["status"], revoked["error"]) == (401, "revoked"), rogue_log
    assert revoked["accepted_before"] >= 1, rogue_log  # it was in before the revocation

    assert served.phase == SUCCEEDED, served.describe()
    server_task, _ = server_outputs(served)
    # The address to hand out, for a NodePort Service: the node's.
    assert server_task.outputs.parameters["server_address"] == node_address, server_task.outputs
    assert node_address in server_task.logs
    for result in clients.values():
        assert result.phase == SUCCEEDED, result.describe()
        assert address in result.one("fl-client").logs, result
    assert expected.phase == SUCCEEDED, expected.describe()
    check_default_run(reference_env, expected)

    record = history(served)
    assert record["status"] == "finished", record
    assert record["revoked"] == [ROGUE], record
    contributors = sorted(SILOS.values())
    assert [r["contributors"] for r in record["rounds"][1:]] == [contributors] * 2, record
    first = record["rounds"][1]
    # Closed by the revocation with the quorum, not by the round timeout.
    assert not first["timed_out"] and first["duration_s"] < BASE_ARGUMENTS["round_timeout"], first
    logs = [server_task.logs, rogue_log, *(r.one("fl-client").logs for r in clients.values())]
    for token_file in out.glob("*/token"):
        token = token_file.read_text().strip()
        assert all(token not in log for log in logs), f"{token_file.parent.name}'s token in a log"
    _assert_same_weights(_weights(served), _weights(expected))
