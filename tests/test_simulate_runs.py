"""``fl-kubeflow simulate`` end to end: the real server process, worker processes, real HTTP.

The numpy clients are DeltaTrainers with a per-client delta and example count
(simulation/population.py), so the final model is known exactly from the server's
own record of who contributed to each round.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fl_kubeflow.client.numpy_trainers import random_weights
from fl_kubeflow.simulation.options import SimulationOptions
from fl_kubeflow.simulation.population import numpy_delta, numpy_examples
from fl_kubeflow.simulation.runner import Simulation

PARAMS = 1000
RUN_TIMEOUT = 120.0  # a broken run fails the test here instead of hanging it


def numpy_options(
    output: Path, clients: int, fraction_fit: float, rounds: int
) -> SimulationOptions:
    return SimulationOptions(
        clients=clients,
        fraction_fit=fraction_fit,
        rounds=rounds,
        trainer="numpy",
        params=PARAMS,
        workers=2,
        output=output,
        join_timeout=RUN_TIMEOUT,
        round_timeout=RUN_TIMEOUT,
        timeout=RUN_TIMEOUT,
    )


def expected_fedavg(history: dict, seed: int) -> np.ndarray:
    """The initial model moved, round by round, by the example-weighted mean of the
    contributors' deltas, as the server folds them (float64 sum of float32 updates)."""
    weights = random_weights(((PARAMS,),), seed)["t000"]
    for record in history["rounds"][1:]:
        clients = [int(c) for c in record["contributors"]]
        total = sum(numpy_examples(c) for c in clients)
        folded = sum(
            numpy_examples(c) * (weights + np.float32(numpy_delta(c))).astype(np.float64)
            for c in clients
        )
        weights = (folded / total).astype(np.float32)
    return weights


def test_200_numpy_clients_sampled_a_tenth_a_round(tmp_path: Path) -> None:
    lines: list[str] = []
    result = Simulation(numpy_options(tmp_path, 200, 0.1, 3), lines.append).run()
    history = result.history
    assert history["status"] == "finished"
    assert history["clients"] == sorted(str(c) for c in range(200))  # every client joined
    rounds = history["rounds"][1:]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for record in rounds:
        assert len(record["sampled"]) == 20  # int(0.1 * 200)
        assert record["contributors"] == record["sampled"]
        assert record["num_examples"] == sum(numpy_examples(int(c)) for c in record["sampled"])
    final = load_file(str(tmp_path / "weights.safetensors"))["t000"]
    np.testing.assert_allclose(final, expected_fedavg(history, 0), rtol=0, atol=1e-6)
    summary = result.summary
    for key in ("wall_s", "median_round_s", "clients", "fraction_fit", "workers", "trainer"):
        assert summary[key] is not None, key
    assert len(summary["round_s"]) == 3
    peak = summary["peak_rss_bytes"]
    assert len(peak["workers"]) == 2 and all(w > 0 for w in peak["workers"])
    assert peak["server"] > 0 and peak["sum"] >= peak["server"]
    assert peak["sum"] <= peak["server"] + sum(peak["workers"])
    # 60 fits over two workers, no final model fetched (numpy clients do not evaluate).
    reports = summary["worker_reports"]
    assert sum(r["fits"] for r in reports) == 60
    assert sum(r["final_downloads"] for r in reports) == 0
    assert (tmp_path / "simulation.json").is_file() and (tmp_path / "report.html").is_file()
    assert any(line.startswith("round   3/3: 20 clients") for line in lines), lines


def _sockets(pid: int) -> int:
    """How many sockets process ``pid`` holds (its listening ones included)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            continue  # closed meanwhile
    return count


def _run_in_background(simulation: Simulation) -> tuple[threading.Thread, list[BaseException]]:
    """Start ``simulation.run()`` on a daemon thread; what it raised lands in the list."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            simulation.run()
        except BaseException as exc:  # reported by the test thread
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, failure


def test_idle_clients_hold_no_connections(tmp_path: Path) -> None:
    simulation = Simulation(numpy_options(tmp_path, 1000, 0.01, 3), lambda line: None)
    thread, failure = _run_in_background(simulation)
    most = samples = 0
    deadline = time.monotonic() + RUN_TIMEOUT
    while thread.is_alive() and time.monotonic() < deadline:
        server = simulation.server
        if server is not None and server.returncode is None:
            with contextlib.suppress(OSError):  # it exited between the check and the read
                most, samples = max(most, _sockets(server.proc.pid)), samples + 1
        time.sleep(0.01)
    thread.join(1)
    assert not failure, failure
    history = simulation.output / "history.json"
    assert history.is_file()
    assert samples > 10
    # 1,000 joined clients, 10 sampled a round: the server holds the workers' few
    # connections (HTTP threads and a main one each), the progress reader's and its
    # listening sockets, never one per client.
    assert most <= 2 * 5 + 8, most


@pytest.mark.slow
def test_keras_clients_learn_digits(tmp_path: Path) -> None:
    pytest.importorskip("keras")
    options = SimulationOptions(
        clients=20,
        fraction_fit=0.25,
        rounds=2,
        trainer="keras",
        model="mlp",
        dataset="digits",
        local_epochs=1,
        batch_size=10,
        learning_rate=0.1,
        workers=1,
        output=tmp_path,
        timeout=300.0,
    )
    result = Simulation(options, lambda line: None).run()
    rounds = result.history["rounds"]
    assert [len(r["contributors"]) for r in rounds[1:]] == [5, 5]
    # Every round's five evaluate the model they were given, the final model's
    # evaluators (fraction_evaluate 1: all 20) share one download of it.
    assert rounds[-1]["evaluate"]["num_clients"] == 20
    # From 0.07 for the initial model (10 classes); 0.74 when this was written.
    assert rounds[-1]["evaluate"]["metrics"]["accuracy"] > 0.6, rounds[-1]
    assert result.summary["worker_reports"][0]["final_downloads"] == 1


def test_a_worker_killed_mid_run_fails_the_simulation_and_stops_everything(
    tmp_path: Path,
) -> None:
    simulation = Simulation(numpy_options(tmp_path, 200, 0.1, 1000), lambda line: None)
    thread, failure = _run_in_background(simulation)
    deadline = time.monotonic() + RUN_TIMEOUT
    # Once round 1 opened (the history's rounds start), the workers are in the run.
    while not list((tmp_path / "logs").glob("worker-1.log")) or "round 1" not in (
        (tmp_path / "logs" / "worker-1.log").read_text()
    ):
        assert time.monotonic() < deadline and thread.is_alive(), failure
        time.sleep(0.05)
    victim = simulation.workers[1]
    os.kill(victim.proc.pid, 9)
    thread.join(RUN_TIMEOUT)
    assert not thread.is_alive()
    assert len(failure) == 1 and "worker 1 failed (exit -9)" in str(failure[0]), failure
    assert simulation.server is not None and simulation.server.returncode is not None
    assert all(w.returncode is not None for w in simulation.workers)
