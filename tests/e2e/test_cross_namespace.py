"""A cross-silo federation on the one-node cluster (issue 15, item 4).

The server pipeline (``fl_server_pipeline.yaml``) runs in namespace A with a registry Secret
made by ``fl-kubeflow credentials issue`` and TLS from a Secret (a self-signed CA and a
server certificate for the Service's DNS names, made here); client pipelines
(``fl_client_pipeline.yaml``) run in namespaces B and C, each with its own credential Secret
(in its own namespace only) and the CA, and reach A's server through its Service
``fl-<run>.<A>.svc``. Their service accounts have no rights in A.

A rogue client, enrolled as a third client ``ROGUE`` whose credential Secret is in C, is a
plain Pod of the project's image (``rogue_client.py``): it cannot list A's Secrets, is
refused with an unknown token (401) and under another client's id with its own token (403),
joins, and is revoked during round 1 by applying the revoked registry Secret in A; its
later requests get 401 ``revoked`` and round 1 closes with the quorum of the two others.

One run does both the refusals and the equality (chosen to keep the test lean): the rogue
never sends an update, so the contributors are B's and C's clients in every round, and the
final model must equal (bitwise, else to 1e-6) the all-in-one pipeline's
(``fl_pipeline.yaml``) run at the same time in a fourth namespace with the same data and
seed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from fl_kubeflow.kube.naming import service_name
from tests.e2e.cross_silo import (
    create_secret,
    make_tls,
    replace_secret,
    service_dns_names,
    start_rogue_pod,
)
from tests.e2e.kfp_ir import PipelineIR
from tests.e2e.kfp_retry import SUCCEEDED
from tests.e2e.kfp_runner import RunResult
from tests.e2e.pipeline_env import (
    BASE_ARGUMENTS,
    FAULT_TIMEOUT,
    REPO,
    TEST_RESOURCES,
    compile_for,
    history,
    make_env,
    server_outputs,
)

CLIENT_ACCOUNT = "data-owner"  # the client namespaces' run account: no Role anywhere
CLIENTS = {"b": "0", "c": "1"}  # namespace -> client id (and data shard of BASE_ARGUMENTS)
ROGUE = "2"
PORT = 8080
REGISTRY_SECRET = "fl-registry"
TLS_SECRET = "fl-server-tls"


def _credentials(tmp_path: Path, ids: list[str]) -> tuple[Path, dict[str, Path]]:
    """``fl-kubeflow credentials issue``: the registry file and a folder per client."""
    out = tmp_path / "credentials"
    subprocess.run(
        [sys.executable, "-m", "fl_kubeflow", "credentials", "issue", "--out", str(out),
         "--clients", ",".join(ids)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return out / "registry.json", {i: out / i for i in ids}


def _revoke(registry: Path, client_id: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "fl_kubeflow", "credentials", "revoke", "--registry",
         str(registry), client_id],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _folder_data(folder: Path, **extra: str) -> dict[str, str]:
    return {**{f.name: f.read_text() for f in folder.iterdir() if f.is_file()}, **extra}


def _compile(image: str, output: Path, which: str) -> PipelineIR:
    """``python compile.py --image IMAGE --pipeline WHICH`` with the small resources."""
    flags = [f"--{name}={value}" for name, value in TEST_RESOURCES.items()]
    command = [sys.executable, str(REPO / "compile.py"), "--image", image, "--output", str(output)]
    subprocess.run(
        [*command, "--pipeline", which, *flags],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return PipelineIR.load(output)


def _weights(result: RunResult) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    _, model_dir = server_outputs(result)
    return load_file(str(model_dir / "weights.safetensors"))


def _assert_same_weights(final: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(final) == sorted(expected)
    for name, value in expected.items():
        assert final[name].shape == value.shape, name
        if not np.array_equal(final[name], value):
            np.testing.assert_allclose(final[name], value, rtol=0, atol=1e-6, err_msg=name)


def test_cross_namespace_federation_with_per_client_credentials_tls_and_revocation(
    node_cluster, tmp_path
):
    image = node_cluster.image
    core = node_cluster.core_v1()
    irs = {
        "all-in-one": compile_for(image, tmp_path / "fl_pipeline.yaml"),
        "server": _compile(image, tmp_path / "fl_server_pipeline.yaml", "server"),
        "client": _compile(image, tmp_path / "fl_client_pipeline.yaml", "client"),
    }
    reference_env = make_env(node_cluster, irs["all-in-one"], "ref")
    server_env = make_env(node_cluster, irs["server"], "silo-a")
    client_envs = {
        key: make_env(
            node_cluster, irs["client"], f"silo-{key}", account=CLIENT_ACCOUNT, with_role=False
        )
        for key in CLIENTS
    }
    envs = [reference_env, server_env, *client_envs.values()]
    try:
        _run_scenario(node_cluster, core, image, tmp_path, reference_env, server_env, client_envs)
    finally:
        for env in envs:
            node_cluster.delete_namespace(env.namespace)


def _run_scenario(
    cluster: Any,
    core: Any,
    image: str,
    tmp_path: Path,
    reference_env: Any,
    server_env: Any,
    client_envs: dict[str, Any],
) -> None:
    a = server_env.namespace
    run_id = str(uuid.uuid4())
    service = service_name(run_id)
    address = f"https://{service}.{a}.svc:{PORT}"
    tls = make_tls(service_dns_names(service, a))

    registry, folders = _credentials(tmp_path, [*CLIENTS.values(), ROGUE])
    create_secret(core, a, REGISTRY_SECRET, {"registry.json": registry.read_text()})
    create_secret(
        core, a, TLS_SECRET, {"tls.crt": tls.cert_pem, "tls.key": tls.key_pem}, "kubernetes.io/tls"
    )
    for key, client_id in CLIENTS.items():
        create_secret(
            core,
            client_envs[key].namespace,
            f"fl-credential-{client_id}",
            _folder_data(folders[client_id], **{"ca.crt": tls.ca_pem, "server": address}),
        )
    rogue_namespace = client_envs["c"].namespace
    create_secret(
        core,
        rogue_namespace,
        "rogue-credential",
        _folder_data(folders[ROGUE], **{"ca.crt": tls.ca_pem, "server": address}),
    )

    reference = reference_env.runner().start(BASE_ARGUMENTS)
    server_run = server_env.runner().start(
        {
            **{k: BASE_ARGUMENTS[k] for k in ("num_rounds", "seed", "join_timeout")},
            "round_timeout": BASE_ARGUMENTS["round_timeout"],
            "num_clients": len(CLIENTS) + 1,
            "min_clients": len(CLIENTS),
            "registry_secret": REGISTRY_SECRET,
            "tls_secret": TLS_SECRET,
            "service_type": "ClusterIP",
        },
        run_id=run_id,
    )
    client_runs = {
        key: client_envs[key]
        .runner()
        .start(
            {
                "server_address": address,
                "credential_secret": f"fl-credential-{client_id}",
                "client_id": int(client_id),
                "num_clients": BASE_ARGUMENTS["num_clients"],
                "dataset": BASE_ARGUMENTS["dataset"],
                "seed": BASE_ARGUMENTS["seed"],
            }
        )
        for key, client_id in CLIENTS.items()
    }
    rogue = start_rogue_pod(
        core,
        namespace=rogue_namespace,
        image=image,
        credential_secret="rogue-credential",
        server=address,
        impersonate=CLIENTS["b"],
        foreign_namespace=a,
        revocation_timeout=FAULT_TIMEOUT,
        service_account=CLIENT_ACCOUNT,
    )

    joined = rogue.wait_for("join", FAULT_TIMEOUT)
    assert joined["status"] == 200, rogue.log()
    _revoke(registry, ROGUE)
    replace_secret(core, a, REGISTRY_SECRET, {"registry.json": registry.read_text()})
    revoked = rogue.wait_for("revoked", FAULT_TIMEOUT)

    server = server_run.wait()
    clients = {key: run.wait() for key, run in client_runs.items()}
    expected = reference.wait()
    records = rogue.records()
    log = rogue.log()

    # The data owners' service accounts have no rights in A.
    assert records["foreign_secrets"]["status"] == 403, log
    # Refused on the headers, changing nothing (the weights below show it).
    assert (records["unknown_token"]["status"], records["unknown_token"]["error"]) == (
        401,
        "unauthorized",
    ), log
    for probe in ("impersonate_join", "impersonate_update"):
        assert records[probe]["status"] == 403, log
    assert (revoked["status"], revoked["error"]) == (401, "revoked"), log

    assert server.phase == SUCCEEDED, server
    for result in clients.values():
        assert result.phase == SUCCEEDED, result
        for task in result.tasks:
            for attempt in task.attempts:
                assert address in attempt.log or not attempt.log, attempt.log
    assert expected.phase == SUCCEEDED, expected

    record = history(server)
    assert record["status"] == "finished", record
    ids = sorted(CLIENTS.values())
    assert [sorted(r["contributors"]) for r in record["rounds"][1:]] == [ids, ids], record
    server_log = server.one("fl-server").logs
    assert address in server_log or service in server_log, server_log
    for folder in {"token"} and [registry.parent]:
        for credential in folder.glob("*/token"):
            token = credential.read_text().strip()
            assert token not in server_log, "a token in the server's log"
            assert token not in log, "a token in the rogue's log"
    _assert_same_weights(_weights(server), _weights(expected))
    print(json.dumps({"rogue": records}, indent=1))
