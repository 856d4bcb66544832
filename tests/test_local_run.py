"""``fl-kubeflow local`` end to end: real server and client processes, real Keras training."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.fl_processes import run_cli

pytestmark = pytest.mark.slow

TINY = ["--batch-size", "16", "--local-epochs", "1", "--join-timeout", "120"]


def local(output: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli("local", "--output", str(output), *args, timeout=timeout)


def test_local_run_writes_every_output_and_learns(tmp_path):
    out = tmp_path / "run"
    done = local(out, "--clients", "2", "--rounds", "2", *TINY)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in (
        "model.keras",
        "weights.safetensors",
        "history.json",
        "report.html",
        "params.json",
    ):
        assert (out / name).is_file(), name
    history = json.loads((out / "history.json").read_text())
    assert history["status"] == "finished"
    first = history["rounds"][0]["evaluate"]["metrics"]["accuracy"]
    last = history["rounds"][-1]["evaluate"]["metrics"]["accuracy"]
    assert last > first, (first, last)
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert "round   2/2" in done.stdout or "    2        2" in done.stdout

    # model.keras loads and predicts, in a fresh process as a user would.
    check = (
        "import keras, numpy as np, sys; m = keras.models.load_model(sys.argv[1]); "
        "p = m.predict(np.zeros((3, 8, 8, 1), 'float32'), verbose=0); print(p.shape)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", check, str(out / "model.keras")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loaded.stdout.strip() == "(3, 10)", loaded.stderr


def _client_pid(output: Path, client_id: int) -> int:
    """The pid of one client process of a local run, found by its command line."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if "client" in args and str(output / "clients" / f"client-{client_id}.json") in args:
            return int(entry.name)
    raise AssertionError(f"client {client_id} of {output} is not running")


def _run_and_kill_client(out: Path, *args: str) -> tuple[int, str, str]:
    command = [sys.executable, "-m", "fl_kubeflow", "local", "--output", str(out), *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(300, proc.kill)  # readline below must not block forever
    watchdog.start()
    seen = []
    try:
        # The runner prints a line per completed round: kill a client after the first.
        for line in proc.stdout:
            seen.append(line)
            if re.match(r"round\s+\d+/\d+: \d+ clients", line):
                break
        else:
            raise AssertionError(
                f"round 1 never completed:\n{''.join(seen)}\nstderr:\n{proc.stderr.read()}"
            )
        os.kill(_client_pid(out, 1), signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, "".join(seen) + stdout, stderr


def test_killed_client_stops_the_run_and_is_named(tmp_path):
    out = tmp_path / "run"
    code, _stdout, stderr = _run_and_kill_client(out, "--clients", "2", "--rounds", "50", *TINY)
    assert code == 1
    assert "client 1 failed (exit -9)" in stderr
    time.sleep(0.5)
    with pytest.raises(AssertionError):  # every child was stopped
        _client_pid(out, 0)


def test_killed_client_with_quorum_finishes_without_it(tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = _run_and_kill_client(
        out,
        "--clients",
        "2",
        "--rounds",
        "4",
        "--min-clients",
        "1",
        # Long enough for round 1 under load (TensorFlow's first fit); after the kill each
        # round waits this long for client 1 before closing with client 0 alone.
        "--round-timeout",
        "10",
        "--grace-period",
        "3",
        *TINY,
    )
    assert code == 0, stderr
    assert "client 1 failed (exit -9)" in stdout
    history = json.loads((out / "history.json").read_text())
    assert history["status"] == "finished"
    assert any(r.get("timed_out") == ["1"] for r in history["rounds"][1:])
    assert history["rounds"][-1]["contributors"] == ["0"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "imagenet"], "--dataset 'imagenet' is unknown"),
        (["--dataset", "npz:/nonexistent/c{client_id}.npz"], "/nonexistent/c0.npz"),
        (["--partition", "dirichlet:-1"], "alpha must be"),
        (["--model", "resnet"], "--model 'resnet'"),
    ],
)
def test_bad_options_fail_before_anything_starts(tmp_path, args, message):
    done = local(tmp_path / "run", "--clients", "2", "--rounds", "1", *args, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "run" / "logs").exists()


def test_model_data_shape_mismatch_fails_before_round_one(tmp_path):
    make = (
        "import sys; from fl_kubeflow.training.models import build_model; "
        "build_model('mlp', (28, 28, 1), 10).save(sys.argv[1])"
    )
    model = tmp_path / "mnist_mlp.keras"
    subprocess.run([sys.executable, "-c", make, str(model)], check=True, timeout=120)
    done = local(tmp_path / "run", "--clients", "2", "--rounds", "2", "--model", str(model), *TINY)
    assert done.returncode == 1
    assert re.search(r"client \d failed", done.stderr)
    assert "shape" in done.stderr
    assert "round   1/" not in done.stdout


def test_npz_data_per_client(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(2):
        x = rng.random((60, 4, 4, 1), dtype=np.float32)
        y = (x.reshape(60, -1).mean(axis=1) > 0.5).astype(np.int64)
        np.savez(
            tmp_path / f"c{i}.npz",
            x_train=x[:48],
            y_train=y[:48],
            x_test=x[48:],
            y_test=y[48:],
            num_classes=np.int64(2),
        )
    out = tmp_path / "run"
    done = local(
        out,
        "--clients",
        "2",
        "--rounds",
        "2",
        "--dataset",
        f"npz:{tmp_path}/c{{client_id}}.npz",
        *TINY,
    )
    assert done.returncode == 0, done.stderr
    history = json.loads((out / "history.json").read_text())
    assert history["rounds"][1]["num_examples"] == 96
