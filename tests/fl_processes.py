"""Real server and client processes on loopback for tests, each bounded in time.

They are started as the local runner starts its own (``fl_kubeflow.local.processes``),
but stay in the test's process group and append to their logs, so a restarted server's
log follows the first one's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from fl_kubeflow import wire
from fl_kubeflow.auth import TOKEN_ENV
from fl_kubeflow.local import processes

DEFAULT_TIMEOUT = 120.0


def _env(token: str | None) -> dict[str, str | None]:
    """The child's token: this one, or none at all (not one inherited from the test run)."""
    return {TOKEN_ENV: token}


def run_cli(
    *args: str, env: Mapping[str, str | None] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python -m fl_kubeflow ARGS`` to its end, output captured as text.

    ``env`` entries are set over this process's environment; a None value removes one.
    """
    child = dict(os.environ)
    for name, value in (env or {}).items():
        if value is None:
            child.pop(name, None)
        else:
            child[name] = value
    return subprocess.run(
        [sys.executable, "-m", "fl_kubeflow", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child,
    )


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
    env: Mapping[str, str | None] | None = None,
) -> ServerProcess:
    """Start a server (``args`` are extra CLI options) and wait until it listens.

    ``env`` entries are set over the environment (the token's is always ``token``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "server.log"
    try:
        child, port = processes.start_server(
            ["--output", str(folder / "out"), *args],
            folder / f"ready-{time.monotonic_ns()}.json",
            log_path,
            {**(env or {}), **_env(token)},
            port=port,
            log_level=log_level,
            ready_timeout=ready_timeout,
            append_log=True,
            new_session=False,
        )
    except processes.ServerStartError as exc:
        if exc.exited:
            code = exc.child.returncode
            raise AssertionError(f"server exited with {code}:\n{log_path.read_text()}") from None
        raise AssertionError(f"server not listening after {ready_timeout}s") from None
    return ServerProcess(child.proc, folder, port, log_path, token)


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
    child = processes.spawn(
        f"client {client_id}",
        processes.fl_command(command),
        log_path,
        _env(token),
        append_log=True,
        new_session=False,
    )
    return ClientProcess(child.proc, str(client_id), log_path, summary)


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
