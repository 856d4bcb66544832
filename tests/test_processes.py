"""The one server starter (``fl_kubeflow.local.processes``) that the local runner, the
tests and the benchmarks share: real ``fl-kubeflow server`` processes on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from fl_kubeflow.auth import TOKEN_ENV, new_token
from fl_kubeflow.local import processes


def test_start_server_returns_the_listening_port_and_a_stoppable_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, new_token())  # would close the run if it were inherited
    ready = tmp_path / "ready.json"
    ready.write_text('{"port": 1}')  # left by an earlier run: must not be believed
    child, port = processes.start_server(
        ["--clients", "1", "--rounds", "1", "--join-timeout", "60"],
        ready,
        tmp_path / "logs" / "server.log",
        {TOKEN_ENV: None},  # None: not inherited from this process either
        log_level="DEBUG",
    )
    try:
        assert port != 1
        health = requests.get(f"http://{processes.LOOPBACK}:{port}/healthz", timeout=10)
        assert health.json() == {"status": "ok"}
        # No token in its environment: the run is open.
        status = requests.get(f"http://{processes.LOOPBACK}:{port}/v1/status", timeout=10)
        assert status.status_code == 200
    finally:
        child.stop()
    assert child.returncode is not None
    assert "no token" in child.log_path.read_text()


def test_a_server_that_exits_at_start_is_reported_with_its_last_words(tmp_path: Path) -> None:
    with pytest.raises(processes.ServerStartError) as error:
        processes.start_server(
            ["--clients", "0", "--rounds", "1"], tmp_path / "ready.json", tmp_path / "server.log"
        )
    assert error.value.exited
    assert str(error.value).startswith("the server exited at start:")
    assert "argument --clients: '0' must be at least 1" in str(error.value)


def test_a_server_not_listening_in_time_is_stopped(tmp_path: Path) -> None:
    with pytest.raises(processes.ServerStartError, match="did not listen within") as error:
        processes.start_server(
            ["--clients", "1", "--rounds", "1"],
            tmp_path / "ready.json",
            tmp_path / "server.log",
            ready_timeout=0.001,  # far less than a Python start-up
        )
    assert not error.value.exited
    assert error.value.child.returncode is not None  # stopped, not left running


def test_logs_are_appended_on_request(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    for word in ("first", "second"):
        child = processes.spawn("echo", ["echo", word], log, append_log=True)
        child.proc.wait(30)
    assert log.read_text().split() == ["first", "second"]
    processes.spawn("echo", ["echo", "third"], log).proc.wait(30)
    assert log.read_text().split() == ["third"]
