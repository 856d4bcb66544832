"""Optional TLS: the server serves HTTPS from a certificate and key; clients verify a CA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.fl_processes import start_client, start_server, wait_all


def make_certificates(folder: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / name for name in ("ca.crt", "ca.key", "server.crt", "server.key")}
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            files["ca.key"],
            "-out",
            files["ca.crt"],
            "-days",
            "1",
            "-subj",
            "/CN=fl-test-ca",
        ],
        [
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            files["server.key"],
            "-out",
            folder / "server.csr",
            "-subj",
            "/CN=localhost",
        ],
        [
            "x509",
            "-req",
            "-in",
            folder / "server.csr",
            "-CA",
            files["ca.crt"],
            "-CAkey",
            files["ca.key"],
            "-CAcreateserial",
            "-out",
            files["server.crt"],
            "-days",
            "1",
            "-extfile",
            ext,
        ],
    ]
    for step in steps:
        subprocess.run(["openssl", *map(str, step)], check=True, capture_output=True, timeout=60)
    return files


@pytest.fixture
def certs(tmp_path):
    try:
        return make_certificates(tmp_path / "pki")
    except FileNotFoundError:
        pytest.skip("openssl is not installed: cannot make test certificates")


def test_clients_verify_the_server_and_finish(tmp_path, certs):
    server = start_server(
        tmp_path,
        "--clients",
        "2",
        "--rounds",
        "2",
        "--tls-cert",
        str(certs["server.crt"]),
        "--tls-key",
        str(certs["server.key"]),
        "--grace-period",
        "5",
    )
    url = f"https://127.0.0.1:{server.port}"
    try:
        assert "on https://" in server.log()
        # Plain HTTP to the TLS port gets no answer a client could mistake for success.
        with pytest.raises(requests.RequestException):
            requests.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5).raise_for_status()
        assert requests.get(f"{url}/healthz", verify=str(certs["ca.crt"]), timeout=5).ok
        clients = [
            start_client(tmp_path, url, i, "--ca-file", str(certs["ca.crt"])) for i in (0, 1)
        ]
        assert wait_all(clients) == [0, 0], [c.log() for c in clients]
        assert server.wait() == 0, server.log()
        assert server.history()["status"] == "finished"
    finally:
        server.kill()


def test_a_client_that_cannot_verify_fails_fast(tmp_path, certs):
    server = start_server(
        tmp_path,
        "--clients",
        "1",
        "--rounds",
        "1",
        "--tls-cert",
        str(certs["server.crt"]),
        "--tls-key",
        str(certs["server.key"]),
        "--join-timeout",
        "30",
    )
    try:
        client = start_client(
            tmp_path, f"https://127.0.0.1:{server.port}", 0, "--retry-timeout", "120"
        )
        assert client.wait(60) == 1  # at once, not after the 120 s retry deadline
        assert "TLS verification failed" in client.log()
    finally:
        server.kill()


def test_certificate_without_key_is_refused(tmp_path, certs):
    done = subprocess.run(
        [sys.executable, "-m", "fl_kubeflow", "server", "--tls-cert", str(certs["server.crt"])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "TLS needs both a certificate and a key file" in done.stderr
