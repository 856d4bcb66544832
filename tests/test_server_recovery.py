"""A crashed server process is restarted inside its pod from the checkpoint; nothing else is.

Real processes throughout: the supervisor (``fl_kubeflow.tasks.server_process``) runs the
federation in a child, the tests find that child by its command line (as one would in a
pod or on a node) and SIGKILL it. The last test runs the fl-server component through
KFP's executor path next to an uninterrupted twin and compares their final weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fl_kubeflow import wire
from fl_kubeflow.auth import new_token
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.tasks.server_process import ServerProcessError, serve_in_child
from tests.fl_processes import start_delta_clients, wait_all
from tests.ports import free_port
from tests.process_tree import SERVER_PROCESS, descendants_running, wait_for_one, wait_gone

WAIT = 60.0  # for a child to start or go, on two shared cores


def _config(tmp_path: Path, checkpoint: bool = True, **overrides: Any) -> ServerConfig:
    values: dict[str, Any] = {
        "num_clients": 2,
        "num_rounds": 1,
        "join_timeout": 120.0,
        "host": "127.0.0.1",
        "port": free_port(),
        "output_dir": tmp_path / "out",
        "checkpoint_dir": tmp_path / "ckpt" if checkpoint else None,
        **overrides,
    }
    return ServerConfig(**values)


class Supervised:
    """serve_in_child on a thread: its result or exception once it returns."""

    def __init__(self, config: ServerConfig, **kwargs: Any) -> None:
        self.outcome: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, args=(config,), kwargs=kwargs)
        self.thread.start()

    def _run(self, config: ServerConfig, **kwargs: Any) -> None:
        try:
            self.outcome["result"] = serve_in_child(config, **kwargs)
        except Exception as exc:
            self.outcome["error"] = exc

    def join(self, timeout: float = WAIT) -> dict[str, Any]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"serve_in_child still running after {timeout:g}s"
        return self.outcome


def _listening_ports(pid: int) -> set[int]:
    """TCP ports ``pid`` listens on: its socket inodes matched in /proc/net/tcp{,6}."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _wait_listening(pid: int, timeout: float = WAIT) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ports = _listening_ports(pid)
        if ports:
            return min(ports)
        time.sleep(0.05)
    raise AssertionError(f"process {pid} not listening after {timeout:g}s")


def test_a_crashed_server_restarts_on_its_port_until_the_restarts_run_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="fl_kubeflow.tasks.server")
    supervised = Supervised(_config(tmp_path, port=0), max_restarts=1)
    first = wait_for_one(os.getpid(), SERVER_PROCESS, WAIT)
    port = _wait_listening(first)
    os.kill(first, signal.SIGKILL)
    second = wait_for_one(os.getpid(), SERVER_PROCESS, WAIT, exclude={first})
    # Port 0 picked a free port once; the restarted process takes the same one.
    assert _wait_listening(second) == port
    os.kill(second, signal.SIGKILL)
    outcome = supervised.join()
    error = outcome.get("error")
    assert isinstance(error, ServerProcessError), outcome
    assert f"(pid {second}) was killed by SIGKILL; not restarted again: 1 restart" in str(error)
    assert f"(pid {first}) was killed by SIGKILL; restarting it (restart 1 of 1)" in caplog.text


def test_without_a_checkpoint_a_crash_is_not_restarted(tmp_path: Path) -> None:
    supervised = Supervised(_config(tmp_path, checkpoint=False), max_restarts=3)
    child = wait_for_one(os.getpid(), SERVER_PROCESS, WAIT)
    _wait_listening(child)
    os.kill(child, signal.SIGKILL)
    error = supervised.join().get("error")
    assert isinstance(error, ServerProcessError)
    assert "killed by SIGKILL; no checkpoint_dir, so it is not restarted" in str(error)
    assert descendants_running(os.getpid(), SERVER_PROCESS) == []


def test_a_server_outliving_its_time_is_killed(tmp_path: Path) -> None:
    supervised = Supervised(_config(tmp_path), max_restarts=0, timeout=2.0)
    error = supervised.join().get("error")
    assert isinstance(error, ServerProcessError)
    assert "still running after 2s; not restarted again: 0 restart(s)" in str(error)
    assert descendants_running(os.getpid(), SERVER_PROCESS) == []


def test_a_failed_federation_and_a_refused_config_are_answers_not_crashes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="fl_kubeflow.tasks.server")
    # Nobody joins: the federation fails by itself, cleanly. Not restarted.
    started = time.monotonic()
    result = serve_in_child(_config(tmp_path, join_timeout=1.0), max_restarts=2)
    assert time.monotonic() - started < WAIT
    assert not result.ok and "join" in (result.error or "")
    assert result.history["status"] == "failed"
    assert result.history_path == tmp_path / "out" / "history.json"
    # serve() refuses an unreadable initial model: ValueError, as from serve() itself.
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="initial weights"):
        serve_in_child(_config(tmp_path / "b", initial_weights=bad), max_restarts=2)
    assert "restarting" not in caplog.text


ORPHAN = r"""
import sys
from pathlib import Path
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.tasks.server_process import serve_in_child
folder = Path(sys.argv[1])
serve_in_child(
    ServerConfig(num_clients=2, num_rounds=1, join_timeout=300.0, host="127.0.0.1", port=0,
                 output_dir=folder / "out", checkpoint_dir=folder / "ckpt"),
    max_restarts=2,
)
"""


def test_the_server_process_exits_when_the_task_process_is_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN, str(tmp_path)])
    try:
        child = wait_for_one(parent.pid, SERVER_PROCESS, WAIT)
        _wait_listening(child)
        parent.kill()
        parent.wait(WAIT)
        # Its stdin closes with the parent: it stops instead of serving on, unsupervised.
        wait_gone(child, WAIT)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(WAIT)


# --- the fl-server component, killed mid-run, against an uninterrupted twin --------------

ROUNDS = 4
DELTAS, COUNTS = (0.5, -1.5), (3, 1)
RUN_TIMEOUT = 420.0  # two federations, two .keras exports (TensorFlow) on two shared cores

# In a child process: keeps TensorFlow out of pytest. The weights the server starts from,
# named and shaped as the clients' Keras model (the export loads them into one).
INITIAL_WEIGHTS = r"""
import sys
from fl_kubeflow import wire
from fl_kubeflow.training.datasets import dataset_spec
from fl_kubeflow.training.models import build_model, get_weights
shape, classes = dataset_spec("digits", 0)
weights = get_weights(build_model("mlp", shape, classes, seed=0))
open(sys.argv[1], "wb").write(wire.encode(weights))
"""


@pytest.fixture(scope="module")
def initial_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("initial_model")
    done = subprocess.run(
        [sys.executable, "-c", INITIAL_WEIGHTS, str(folder / "weights.safetensors")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def _completed_round(checkpoint: Path) -> int:
    try:
        return int(json.loads((checkpoint / "state.json").read_text())["completed_round"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_server_component_killed_mid_run_recovers_to_the_uninterrupted_weights(
    tmp_path: Path, initial_model: Path
) -> None:
    from fl_kubeflow_kfp.components import build_components

    from tests.kfp_executor import start_executor

    server_component = build_components().server
    token = new_token()
    runs = {}
    for name in ("uninterrupted", "killed"):
        folder = tmp_path / name
        port = free_port()
        parameters = {
            "run_id": f"recovery-{name}",
            # Integers as the IR stores them: the component takes them as floats too.
            "num_clients": 2.0,
            "num_rounds": float(ROUNDS),
            "min_clients": 0.0,
            "port": float(port),
            "max_restarts": 2.0,
            "join_timeout": 120.0,
            "round_timeout": 120.0,
            "dataset": "digits",
            "model": "mlp",
            "checkpoint_dir": str(folder / "ckpt"),
        }
        executor = start_executor(
            server_component,
            parameters,
            folder,
            input_artifacts={"initial_model": initial_model},
            env={"FL_KUBEFLOW_TOKEN": token, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        clients = start_delta_clients(
            folder,
            f"http://127.0.0.1:{port}",
            DELTAS,
            COUNTS,
            "--fit-delay",
            "0.4",
            "--retry-timeout",
            "120",
            token=token,
        )
        runs[name] = (executor, clients, folder / "ckpt" / f"recovery-{name}")

    executor, clients, checkpoint = runs["killed"]
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while _completed_round(checkpoint) < 2:
            assert executor.proc.poll() is None, executor.log()
            assert time.monotonic() < deadline, "round 2 not checkpointed in time"
            time.sleep(0.05)
        # The federation's process, found by its command line under the task's process.
        victim = wait_for_one(executor.proc.pid, SERVER_PROCESS, WAIT)
        os.kill(victim, signal.SIGKILL)

        for name, (run, run_clients, _) in runs.items():
            assert wait_all(run_clients, RUN_TIMEOUT) == [0, 0], [c.log() for c in run_clients]
            assert run.wait(RUN_TIMEOUT) == 0, f"{name}:\n{run.log()}"
    finally:
        for run, run_clients, _ in runs.values():
            for process in [run.proc, *(c.proc for c in run_clients)]:
                if process.poll() is None:
                    process.kill()
                    process.wait(WAIT)

    log = executor.log()
    assert f"server process (pid {victim}) was killed by SIGKILL; restarting it" in log
    assert "resumed from checkpoint after round" in log
    assert "restarting" not in runs["uninterrupted"][0].log()

    final = {}
    for name, (run, _, _) in runs.items():
        model_dir = run.artifacts["trained_model"]
        history = json.loads((model_dir / "history.json").read_text())
        assert history["status"] == "finished", name
        assert [r["round"] for r in history["rounds"]] == list(range(ROUNDS + 1)), name
        assert all(r["contributors"] == ["0", "1"] for r in history["rounds"][1:]), name
        assert (model_dir / "model.keras").is_file(), name
        final[name] = wire.decode((model_dir / "weights.safetensors").read_bytes())

    # Bit for bit: a round lost or aggregated twice would differ by a whole step.
    assert final["killed"].keys() == final["uninterrupted"].keys()
    for key, value in final["uninterrupted"].items():
        assert np.array_equal(final["killed"][key], value), key
    start = wire.decode((initial_model / "weights.safetensors").read_bytes())
    step = sum(d * n for d, n in zip(DELTAS, COUNTS, strict=True)) / sum(COUNTS)
    for key, value in start.items():
        np.testing.assert_allclose(final["killed"][key], value + ROUNDS * step, atol=1e-5)
