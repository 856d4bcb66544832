"""Real server and client processes on loopback for tests, each bounded in time."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from fl_kubeflow import wire
from fl_kubeflow.auth import TOKEN_ENV

PYTHON = sys.executable
DEFAULT_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(token: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.pop(TOKEN_ENV, None)
    if token is not None:
        env[TOKEN_ENV] = token
    return env


@dataclass
class ServerProcess:
    """An ``fl-kubeflow server`` child process with its folder and port."""

    proc: subprocess.Popen
    folder: Path
    port: int
    log_path: Path
    token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> Path:
        return self.folder / "out"

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"server did not exit within {timeout}s:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def status(self, token: str | None = None) -> dict:
        token = token or self.token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(f"{self.url}/v1/status", headers=headers, timeout=5).json()

    def wait_for_round(
        self, completed: int, timeout: float = 60.0, token: str | None = None
    ) -> None:
        """Block until ``completed`` rounds are aggregated."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.status(token)["completed_rounds"] >= completed:
                    return
            except (requests.RequestException, ValueError, KeyError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"{completed} rounds not completed in {timeout}s:\n{self.log()}")

    def history(self) -> dict:
        return json.loads((self.output / "history.json").read_text())

    def final_weights(self) -> wire.Weights:
        return wire.decode((self.output / "weights.safetensors").read_bytes())


def start_server(
    folder: Path,
    *args: str,
    port: int = 0,
    ready_timeout: float = 30.0,
    token: str | None = None,
    log_level: str = "INFO",
) -> ServerProcess:
    """Start a server (``args`` are extra CLI options) and wait until it listens."""
    folder.mkdir(parents=True, exist_ok=True)
    ready = folder / f"ready-{time.monotonic_ns()}.json"
    log_path = folder / "server.log"
    command = [
        PYTHON,
        "-m",
        "fl_kubeflow",
        "--log-level",
        log_level,
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ready-file",
        str(ready),
        "--output",
        str(folder / "out"),
        *args,
    ]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_env(token))
    deadline = time.monotonic() + ready_timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"server not listening after {ready_timeout}s")
        time.sleep(0.05)
    port = json.loads(ready.read_text())["port"]
    return ServerProcess(proc, folder, port, log_path, token)


@dataclass
class ClientProcess:
    proc: subprocess.Popen
    client_id: str
    log_path: Path
    summary_path: Path

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(
                f"client {self.client_id} did not exit within {timeout}s:\n{self.log()}"
            ) from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def summary(self) -> dict:
        return json.loads(self.summary_path.read_text())


def start_client(
    folder: Path,
    server_url: str,
    client_id: int,
    *args: str,
    trainer: str = "numpy-delta",
    token: str | None = None,
    log_level: str = "INFO",
) -> ClientProcess:
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"client-{client_id}.log"
    summary = folder / f"client-{client_id}.json"
    command = [
        PYTHON,
        "-m",
        "fl_kubeflow",
        "--log-level",
        log_level,
        "client",
        "--server",
        server_url,
        "--client-id",
        str(client_id),
        "--trainer",
        trainer,
        "--summary",
        str(summary),
        *args,
    ]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_env(token))
    return ClientProcess(proc, str(client_id), log_path, summary)


def start_delta_clients(
    folder: Path,
    server_url: str,
    deltas: Sequence[float],
    counts: Sequence[int],
    *args: str,
    token: str | None = None,
) -> list[ClientProcess]:
    """Client i adds ``deltas[i]`` to the weights and reports ``counts[i]`` examples; ``args``
    go to every client. FedAvg's result is then sum(d * n) / sum(n) per round, exactly."""
    return [
        start_client(
            folder, server_url, i, "--delta", str(d), "--num-examples", str(n), *args, token=token
        )
        for i, (d, n) in enumerate(zip(deltas, counts, strict=True))
    ]


def wait_all(processes: Sequence, timeout: float = DEFAULT_TIMEOUT) -> list[int]:
    deadline = time.monotonic() + timeout
    return [p.wait(max(1.0, deadline - time.monotonic())) for p in processes]


@dataclass
class RawClient:
    """A hand-driven client over real HTTP, for sending exactly the requests a test needs."""

    url: str
    client_id: str
    session: requests.Session = field(default_factory=requests.Session)
    headers: dict[str, str] = field(default_factory=dict)

    def _h(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"X-FL-Client-Id": self.client_id, **self.headers, **(extra or {})}

    def join(self) -> requests.Response:
        return self.session.post(
            f"{self.url}/v1/join",
            json={"client_id": self.client_id},
            headers=self._h(),
            timeout=30,
        )

    def propose(self, weights: wire.Weights) -> requests.Response:
        return self.session.post(
            f"{self.url}/v1/initial", data=wire.encode(weights), headers=self._h(), timeout=30
        )

    def model(self, server_round: int, wait: float = 10.0) -> requests.Response:
        return self.session.get(
            f"{self.url}/v1/model",
            params={"round": server_round, "wait": wait},
            headers=self._h(),
            timeout=wait + 30,
        )

    def update(
        self,
        server_round: int | str,
        body: bytes,
        num_examples: int | str = 1,
        metrics: str = "{}",
        extra: dict[str, str] | None = None,
    ) -> requests.Response:
        headers = self._h(
            {
                "X-FL-Round": str(server_round),
                "X-FL-Num-Examples": str(num_examples),
                "X-FL-Metrics": metrics,
                **(extra or {}),
            }
        )
        return self.session.post(f"{self.url}/v1/update", data=body, headers=headers, timeout=60)

    def evaluate(self, server_round: int, num_examples: int, metrics: dict) -> requests.Response:
        return self.session.post(
            f"{self.url}/v1/evaluate",
            json={
                "client_id": self.client_id,
                "round": server_round,
                "num_examples": num_examples,
                "metrics": metrics,
            },
            headers=self._h(),
            timeout=30,
        )

    def leave(self) -> requests.Response:
        return self.session.post(
            f"{self.url}/v1/leave",
            json={"client_id": self.client_id},
            headers=self._h(),
            timeout=30,
        )
