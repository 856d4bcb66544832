"""An asynchronous run survives a server killed mid-run: restarted on its checkpoint
folder it finishes with every version, those saved before the kill unchanged."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fl_kubeflow import wire
from fl_kubeflow.client.numpy_trainers import DeltaTrainer
from tests.fl_processes import start_delta_clients, wait_all

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = 8
DELTAS, COUNTS = (0.5, -1.5), (3, 1)

TIMEOUT = 120.0


def start(folder: Path, spec: dict, attempt: int) -> tuple[subprocess.Popen, int]:
    """The async server as a child process (tests/fedbuff_server.py); its port."""
    spec_path, ready = folder / "spec.json", folder / f"ready-{attempt}.json"
    spec_path.write_text(json.dumps(spec))
    log = (folder / "server.log").open("a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fedbuff_server", str(spec_path), str(ready)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + TIMEOUT
    while not ready.exists():
        assert proc.poll() is None, (folder / "server.log").read_text()
        assert time.monotonic() < deadline, "server not listening in time"
        time.sleep(0.02)
    return proc, int(json.loads(ready.read_text())["port"])


def saved_state(checkpoint: Path) -> dict:
    try:
        return json.loads((checkpoint / "state.json").read_text())
    except (OSError, ValueError):
        return {"completed_round": 0}


def test_async_run_resumes_after_sigkill(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    spec = {
        "num_clients": 2,
        "num_rounds": VERSIONS,
        "output_dir": str(tmp_path / "out"),
        "checkpoint_dir": str(checkpoint),
        "round_timeout": 60.0,
        "join_timeout": 60.0,
        "grace_period": 10.0,
        "async": {"buffer_size": 2, "staleness_exponent": 0.5},
    }
    server, port = start(tmp_path, spec, 0)
    clients = start_delta_clients(
        tmp_path,
        f"http://127.0.0.1:{port}",
        DELTAS,
        COUNTS,
        "--fit-delay",
        "0.2",
        "--retry-timeout",
        "60",
    )
    restarted = None
    try:
        deadline = time.monotonic() + TIMEOUT
        while saved_state(checkpoint)["completed_round"] < 3:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "version 3 not checkpointed in time"
            time.sleep(0.02)
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        saved = saved_state(checkpoint)
        assert 3 <= saved["completed_round"] < VERSIONS
        # The clients keep retrying; the restarted server resumes from the checkpoint.
        restarted, _ = start(tmp_path, {**spec, "port": port}, 1)
        assert wait_all(clients, TIMEOUT) == [0, 0], [c.log() for c in clients]
        assert restarted.wait(TIMEOUT) == 0, (tmp_path / "server.log").read_text()
    finally:
        for proc in [server, restarted, *(c.proc for c in clients)]:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)

    log = (tmp_path / "server.log").read_text()
    assert f"resumed from checkpoint after round {saved['completed_round']}" in log
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert history["status"] == "finished" and history["mode"] == "async"
    assert [r["round"] for r in history["rounds"]] == list(range(VERSIONS + 1))
    # The versions saved before the kill are the same records after the resume.
    for before in saved["run"]["rounds"]:
        after = history["rounds"][before["number"]]
        for key in ("contributors", "base_versions", "staleness", "num_examples", "started_at"):
            shown = sorted(before[key]) if key == "contributors" else before[key]
            assert after[key] == shown, (key, before, after)
        assert after["duration_s"] == before["duration_s"]
    for record in history["rounds"][1:]:
        assert record["contributors"] == ["0", "1"]
    # K = N with one update per client and buffer: every update is fresh, so each version
    # adds FedAvg's step exactly, and a version lost or counted twice would show.
    start_weights = DeltaTrainer().initial_weights()  # what the clients propose
    final = wire.decode((tmp_path / "out" / "weights.safetensors").read_bytes())
    step = sum(d * n for d, n in zip(DELTAS, COUNTS, strict=True)) / sum(COUNTS)
    for name, value in start_weights.items():
        np.testing.assert_allclose(final[name], value + VERSIONS * step, atol=1e-5)
