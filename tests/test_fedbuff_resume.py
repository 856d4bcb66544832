"""An asynchronous run survives a server killed mid-run: the real ``fl-kubeflow server
--mode async --checkpoint-dir ...`` command, killed with SIGKILL and started again with
the same command, resumes from its checkpoint and finishes with every version, those
saved before the kill unchanged, and the exact weights an uninterrupted run makes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from fl_kubeflow.client.numpy_trainers import DeltaTrainer
from tests.fl_processes import start_delta_clients, start_server, wait_all

VERSIONS = 8
DELTAS, COUNTS = (0.5, -1.5), (3, 1)

TIMEOUT = 120.0


def server_command(checkpoint: Path) -> list[str]:
    """The server's options, the same for the first start and the restart."""
    return [
        *("--clients", "2", "--rounds", str(VERSIONS)),
        *("--checkpoint-dir", str(checkpoint)),
        *("--round-timeout", "60", "--join-timeout", "60", "--grace-period", "10"),
        *("--mode", "async", "--async-buffer-size", "2", "--async-staleness-exponent", "0.5"),
    ]


def saved_state(checkpoint: Path) -> dict:
    try:
        return json.loads((checkpoint / "state.json").read_text())
    except (OSError, ValueError):
        return {"completed_round": 0}


def test_async_run_resumes_after_sigkill(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    command = server_command(checkpoint)
    server = start_server(tmp_path, *command)
    clients = start_delta_clients(
        tmp_path,
        server.url,
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
            assert server.proc.poll() is None, server.log()
            assert time.monotonic() < deadline, "version 3 not checkpointed in time"
            time.sleep(0.02)
        server.kill()  # SIGKILL
        assert server.proc.returncode == -9
        saved = saved_state(checkpoint)
        assert 3 <= saved["completed_round"] < VERSIONS
        # The clients keep retrying; the same command on the same port resumes the run.
        restarted = start_server(tmp_path, *command, port=server.port)
        assert wait_all(clients, TIMEOUT) == [0, 0], [c.log() for c in clients]
        assert restarted.wait(TIMEOUT) == 0, restarted.log()
    finally:
        for proc in [server.proc, *(c.proc for c in clients)]:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if restarted is not None:
            restarted.kill()

    log = restarted.log()  # the first server's log, then the restarted one's
    assert f"resumed from checkpoint after round {saved['completed_round']}" in log
    history = restarted.history()
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
    final = restarted.final_weights()
    step = sum(d * n for d, n in zip(DELTAS, COUNTS, strict=True)) / sum(COUNTS)
    for name, value in start_weights.items():
        np.testing.assert_allclose(final[name], value + VERSIONS * step, atol=1e-5)
