"""Run one real federation for the strategy benchmarks: a server process and client processes.

The server is ``python -m fl_kubeflow server`` with ``--strategy`` and one
``--strategy-option`` per option (which it builds and checks before serving, as every
entry point does). Clients are ``python -m fl_kubeflow client`` processes; a Byzantine
one is ``python -m fl_kubeflow.cli.adversarial_cmd``. Everything runs on loopback and
is stopped when the run ends or fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fl_kubeflow import defaults

HERE = Path(__file__).resolve().parent
READY_TIMEOUT_S = 60.0


@dataclass
class Attack:
    """Which client misbehaves, and how (see ``fl_kubeflow.client.adversarial``)."""

    client_id: int
    kind: str = "noise"
    scale: float = 10.0


@dataclass
class RunSpec:
    strategy: str
    options: dict[str, Any] = field(default_factory=dict)
    clients: int = 5
    rounds: int = 10
    partition: str = "iid"
    dataset: str = defaults.DATASET
    model: str = defaults.MODEL
    seed: int = defaults.SEED
    attack: Attack | None = None
    # Clients the dataset is split for (default: ``clients``). More than ``clients`` leaves
    # the last shards out: a run "without client 4's data" for comparison.
    partition_clients: int | None = None


def _env() -> dict[str, str]:
    # Many single-threaded clients share two cores better than many multi-threaded ones.
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }


def run(spec: RunSpec, folder: Path, timeout: float = 1800.0) -> dict[str, Any]:
    """Run ``spec`` to the end and return its history.json (raises RuntimeError on failure)."""
    folder.mkdir(parents=True, exist_ok=True)
    ready = folder / "ready.json"
    ready.unlink(missing_ok=True)
    procs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(name: str, command: list[str]) -> subprocess.Popen:
        log = folder / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env()
            )
        procs.append((name, proc, log))
        return proc

    try:
        server = start(
            "server",
            [
                sys.executable,
                "-m",
                "fl_kubeflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--client-ids",
                ",".join(str(i) for i in range(spec.clients)),
                "--strategy",
                spec.strategy,
                # JSON values: the CLI reads each back as JSON, so the types survive.
                *[
                    arg
                    for key, value in spec.options.items()
                    for arg in ("--strategy-option", f"{key}={json.dumps(value)}")
                ],
                "--clients",
                str(spec.clients),
                "--rounds",
                str(spec.rounds),
                "--ready-file",
                str(ready),
                "--output",
                str(folder / "out"),
            ],
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{_tail(folder / 'server.log')}")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{json.loads(ready.read_text())['port']}"
        for i in range(spec.clients):
            common = [
                "--server",
                url,
                "--client-id",
                str(i),
                "--num-clients",
                str(spec.partition_clients or spec.clients),
                "--trainer",
                "keras",
                "--dataset",
                spec.dataset,
                "--partition",
                spec.partition,
                "--model",
                spec.model,
                "--seed",
                str(spec.seed),
            ]
            if spec.attack is not None and spec.attack.client_id == i:
                module = ["-m", "fl_kubeflow.cli.adversarial_cmd"]
                extra = ["--attack", spec.attack.kind, "--attack-scale", str(spec.attack.scale)]
            else:
                module, extra = ["-m", "fl_kubeflow", "client"], []
            start(f"client-{i}", [sys.executable, *module, *common, *extra])
        deadline = time.monotonic() + timeout
        codes = {name: proc.wait(max(1.0, deadline - time.monotonic())) for name, proc, _ in procs}
        logs = {name: log for name, _, log in procs}
        if codes["server"] != 0:
            raise RuntimeError(f"server exited with {codes['server']}:\n{_tail(logs['server'])}")
        for name, code in codes.items():
            # The server finished the run and wrote its outputs: a client that failed after
            # that (e.g. its goodbye found the server gone) did not change the result.
            if code != 0:
                print(
                    f"warning: {name} exited with {code} after the run finished:\n"
                    f"{_tail(logs[name], 3)}",
                    file=sys.stderr,
                    flush=True,
                )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"run did not finish within {timeout:g}s") from None
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    return json.loads((folder / "out" / "history.json").read_text())


def final_weights(folder: Path) -> dict:
    """The run's final global model (weights.safetensors)."""
    from fl_kubeflow import wire

    return wire.decode((folder / "out" / "weights.safetensors").read_bytes())


def central_accuracy(weights: dict, spec: RunSpec, num_shards: int) -> float:
    """Accuracy of ``weights`` on the union of the local test splits of all ``num_shards``
    clients of ``spec``'s partition: one fixed test set for runs with and without a client."""
    import numpy as np

    from fl_kubeflow.training.datasets import ClientData, load_client_data
    from fl_kubeflow.training.keras_trainer import KerasTrainer, TrainerOptions

    shards = [
        load_client_data(spec.dataset, i, num_shards, partition=spec.partition, seed=spec.seed)
        for i in range(num_shards)
    ]
    x = np.concatenate([s.x_test for s in shards])
    y = np.concatenate([s.y_test for s in shards])
    data = ClientData(x[:1], y[:1], x, y, shards[0].num_classes, shards[0].input_shape, "union")
    trainer = KerasTrainer(TrainerOptions(model=spec.model, seed=spec.seed), data=data)
    result = trainer.evaluate(weights, 0)
    assert result is not None
    return float(result.metrics["accuracy"])


def accuracies(history: dict[str, Any]) -> list[float]:
    """Federated evaluation accuracy of the global model after each round (round 0 first)."""
    return [r["evaluate"]["metrics"]["accuracy"] for r in history["rounds"]]


def rounds_to(target: float, accs: list[float]) -> int | None:
    """The first round whose global model reaches ``target`` accuracy (None: never)."""
    return next((i for i, a in enumerate(accs) if a >= target), None)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
