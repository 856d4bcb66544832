"""Clients on their own credential folder (``client --credential``), and the local runner on
per-client credentials: real server and client processes on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fl_kubeflow.credentials import issue, issue_many, write_credential_dir
from tests.fl_processes import run_cli, start_server
from tests.ports import free_port
from tests.test_tls import make_certificates


def test_a_credential_folder_gives_the_client_its_id_token_ca_and_server(tmp_path: Path) -> None:
    try:
        pki = make_certificates(tmp_path / "pki")
    except FileNotFoundError:
        pytest.skip("openssl is not installed: cannot make test certificates")
    port = free_port()
    registry, (credential,) = issue_many(["hospital-a"])
    registry.save(tmp_path / "registry.json")
    folder = write_credential_dir(
        credential,
        tmp_path / "hospital-a",
        ca_pem=pki["ca.crt"].read_text(),
        server=f"https://127.0.0.1:{port}",
    )
    server = start_server(
        tmp_path,
        *("--clients", "1", "--rounds", "1", "--credentials", str(tmp_path / "registry.json")),
        *("--tls-cert", str(pki["server.crt"]), "--tls-key", str(pki["server.key"])),
        port=port,
    )
    try:
        # No --server, no --ca-file, no --client-id: all from the folder.
        done = run_cli(
            "client", "--credential", str(folder), "--trainer", "numpy-delta", timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.splitlines()[-1])["client_id"] == "hospital-a"
        assert credential.token not in done.stdout + done.stderr
        assert server.wait() == 0, server.log()
        assert server.history()["rounds"][1]["contributors"] == ["hospital-a"]
    finally:
        server.kill()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--client-id", "1"], "--client-id 1 disagrees with the --credential's id '0'"),
        (["--token-file", "/dev/null"], "--credential and --token-file: give one"),
        ([], "--server is required: the --credential names no server"),
    ],
)
def test_credential_options_that_disagree_are_refused(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    folder = write_credential_dir(issue("0"), tmp_path / "c0")
    done = run_cli("client", "--credential", str(folder), "--trainer", "numpy-delta", *extra)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_local_run_on_per_client_credentials(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = run_cli(
        "local",
        "--output",
        str(out),
        "--trainer",
        "numpy-linear",
        "--clients",
        "2",
        "--rounds",
        "2",
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    server_log = (out / "logs" / "server.log").read_text()
    assert "credential registry" in server_log and "2 clients, 1 observers" in server_log
    history = json.loads((out / "history.json").read_text())
    assert [r["contributors"] for r in history["rounds"][1:]] == [["0", "1"], ["0", "1"]]
    # The tokens lived in the run folder for the run only.
    assert not (out / ".credentials").exists()
