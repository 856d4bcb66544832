"""Run a simulation: the real server and a few workers on loopback, then the outputs.

The server is ``fl-kubeflow server`` (local/processes.py starts it as ``fl-kubeflow
local`` does), the workers ``python -m fl_kubeflow.simulation.worker``. Progress
lines come from the server's /v1/status, as local's do; memory is sampled over the
whole run. Outputs: the server's history.json and weights.safetensors, report.html,
params.json and simulation.json (timings, peak memory, what ran).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl_kubeflow import files
from fl_kubeflow.auth import TOKEN_ENV, new_token
from fl_kubeflow.local import processes
from fl_kubeflow.local.progress import ProgressReporter
from fl_kubeflow.local.supervision import Pace, supervise
from fl_kubeflow.simulation.memory import PeakMemory
from fl_kubeflow.simulation.options import SimulationOptions

PACE = Pace(poll_s=0.1, status_s=1.0)
WORKERS_FOLDER = ".workers"


class SimulationError(Exception):
    """The simulation did not finish; the message says which process failed and why."""


@dataclass
class SimulationResult:
    history: dict[str, Any]
    summary: dict[str, Any]
    files: dict[str, Path]


class Simulation:
    """One simulation from start to outputs.

    Args:
        options: What to run.
        emit: Where progress lines go.
        extra_server_args: More ``fl-kubeflow server`` options (after the simulation's).
    """

    def __init__(
        self,
        options: SimulationOptions,
        emit: Callable[[str], None] = print,
        extra_server_args: list[str] | None = None,
    ) -> None:
        options.validate()
        self.options = options
        self.emit = emit
        self.extra_server_args = extra_server_args or []
        self.output = Path(options.output)
        self.logs = self.output / "logs"
        self.scratch = self.output / WORKERS_FOLDER
        self.ready_file = self.output / ".server-ready.json"
        # One fresh shared token for the run: the server and the workers get it in their
        # environment (never a command line); a token of the user's is not passed on.
        self.env: dict[str, str | None] = {TOKEN_ENV: new_token()}
        self.server: processes.Child | None = None
        self.workers: list[processes.Child] = []

    def run(self) -> SimulationResult:
        opts = self.options
        self.output.mkdir(parents=True, exist_ok=True)
        self.scratch.mkdir(exist_ok=True)
        files.write_json(self.output / "params.json", opts.to_dict())
        opts.save(self.scratch / "options.json")
        started = time.monotonic()
        memory = PeakMemory(self._pids)
        try:
            with memory:
                # The workers start first: their framework imports and data loading
                # overlap the server's start; they wait for its ready file to join.
                self.ready_file.unlink(missing_ok=True)
                self._start_workers()
                port = self._start_server()
                url = f"http://127.0.0.1:{port}"
                self.emit(
                    f"server on {url}; {opts.clients} virtual {opts.trainer} clients in "
                    f"{opts.workers} worker(s), fraction_fit {opts.fraction_fit:g}; "
                    f"logs in {self.logs}"
                )
                reporter = ProgressReporter(
                    url, opts.clients, opts.rounds, self.emit, self.env[TOKEN_ENV]
                )
                self._supervise(reporter, started + opts.timeout)
                wall = time.monotonic() - started
                self._wait_workers()
        finally:
            processes.stop_all([c for c in [self.server, *self.workers] if c is not None])
        history = json.loads((self.output / "history.json").read_text())
        summary = self._summary(history, wall, memory)
        shutil.rmtree(self.scratch, ignore_errors=True)
        files.write_json(self.output / "simulation.json", summary)
        outputs = {
            "weights": self.output / "weights.safetensors",
            "history": self.output / "history.json",
            "simulation": self.output / "simulation.json",
            "report": self._write_report(history),
        }
        return SimulationResult(history, summary, outputs)

    def _pids(self) -> dict[str, list[int]]:
        server = [self.server.proc.pid] if self.server is not None else []
        return {"server": server, "workers": [w.proc.pid for w in self.workers]}

    def _start_server(self) -> int:
        opts = self.options
        args = [
            "--clients",
            str(opts.clients),
            "--rounds",
            str(opts.rounds),
            "--min-clients",
            str(opts.min_clients),
            "--strategy",
            opts.strategy,
            *[
                arg
                for key, value in opts.server_strategy_options().items()
                for arg in ("--strategy-option", f"{key}={value}")
            ],
            "--output",
            str(self.output),
            "--join-timeout",
            str(opts.join_timeout),
            "--round-timeout",
            str(opts.round_timeout),
            *self.extra_server_args,
        ]
        try:
            self.server, port = processes.start_server(
                args,
                self.ready_file,
                self.logs / "server.log",
                self.env,
                # A server for N clients starts 2 N + 8 threads before it listens: with
                # thousands of clients that takes longer than the usual minute.
                ready_timeout=max(processes.READY_TIMEOUT_S, self.options.join_timeout),
            )
        except processes.ServerStartError as exc:
            raise SimulationError(str(exc)) from None
        return port

    def _start_workers(self) -> None:
        for index in range(self.options.workers):
            command = [
                sys.executable,
                "-m",
                "fl_kubeflow.simulation.worker",
                "--options",
                str(self.scratch / "options.json"),
                "--index",
                str(index),
                "--ready-file",
                str(self.ready_file),
                "--report",
                str(self._report_path(index)),
            ]
            log_path = self.logs / f"worker-{index}.log"
            self.workers.append(processes.spawn(f"worker {index}", command, log_path, self.env))

    def _report_path(self, index: int) -> Path:
        return self.scratch / f"worker-{index}.json"

    def _supervise(self, reporter: ProgressReporter, deadline: float) -> None:
        """Watch the processes until the server exits; a failing worker ends the run."""
        assert self.server is not None

        def worker_failed(worker: processes.Child, message: str) -> None:
            raise SimulationError(message)

        supervise(
            self.server,
            self.workers,
            reporter,
            deadline,
            PACE,
            worker_failed,
            SimulationError,
            f"the simulation did not finish within --timeout {self.options.timeout:g}s",
        )
        reporter.finish(json.loads((self.output / "history.json").read_text()))

    def _wait_workers(self) -> None:
        """The workers end once their clients left, which the server's end waited for."""
        for worker in self.workers:
            try:
                worker.proc.wait(processes.STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise SimulationError(
                    f"{worker.name} still runs {processes.STOP_TIMEOUT_S:g}s after the server "
                    f"ended:\n{worker.last_words()}"
                ) from None
            if worker.returncode != 0:
                raise SimulationError(
                    f"{worker.name} failed (exit {worker.returncode}):\n{worker.last_words()}"
                )

    def _summary(self, history: dict[str, Any], wall: float, memory: PeakMemory) -> dict[str, Any]:
        opts = self.options
        round_s = [r["duration_s"] for r in history["rounds"] if r["round"] > 0]
        reports = [json.loads(self._report_path(i).read_text()) for i in range(opts.workers)]
        return {
            "wall_s": wall,
            "round_s": round_s,
            "median_round_s": statistics.median(round_s) if round_s else None,
            "peak_rss_bytes": memory.as_dict(),
            "clients": opts.clients,
            "fraction_fit": opts.fraction_fit,
            "workers": opts.workers,
            "trainer": opts.trainer,
            "model": opts.model if opts.trainer != "numpy" else f"numpy {opts.params} params",
            "rounds": opts.rounds,
            "status": history["status"],
            "worker_reports": reports,
        }

    def _write_report(self, history: dict[str, Any]) -> Path:
        from fl_kubeflow.report import write_report

        target = self.output / "report.html"
        write_report(history, self.options.to_dict(), target)
        return target
