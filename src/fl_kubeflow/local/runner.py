"""Run a whole federation on this machine: one server and N client processes on loopback.

The processes are the same ``fl-kubeflow server`` and ``fl-kubeflow client`` that
run in the Kubeflow pods; only the address differs. The runner watches them,
prints progress, stops everything when one fails, and writes the outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fl_kubeflow import defaults, files
from fl_kubeflow.auth import TOKEN_ENV
from fl_kubeflow.credentials import (
    OBSERVER,
    ClientCredential,
    issue,
    issue_many,
    write_credential_dir,
)
from fl_kubeflow.local import processes
from fl_kubeflow.local.processes import Child
from fl_kubeflow.local.progress import ProgressReporter, fmt_metrics
from fl_kubeflow.local.supervision import Pace, supervise
from fl_kubeflow.training.factory import exports_keras

if TYPE_CHECKING:
    from fl_kubeflow.async_params import AsyncParams
    from fl_kubeflow.secagg.params import SecAggParams

PACE = Pace(poll_s=0.25, status_s=0.5)
EXPORT_TIMEOUT_S = 300.0
CREDENTIALS_FOLDER = ".credentials"
REGISTRY_FILE = "registry.json"
PROGRESS_OBSERVER = "progress"


class LocalRunError(Exception):
    """The run did not finish; the message says which process failed and why."""


@dataclass
class LocalRunOptions:
    """Everything ``fl-kubeflow local`` takes; see its --help for each field."""

    clients: int = defaults.NUM_CLIENTS
    rounds: int = defaults.NUM_ROUNDS
    min_clients: int | None = None
    dataset: str = defaults.DATASET
    partition: str = defaults.PARTITION
    model: str = defaults.MODEL
    local_epochs: int = defaults.LOCAL_EPOCHS
    batch_size: int = defaults.BATCH_SIZE
    learning_rate: float = defaults.LEARNING_RATE
    optimizer: str = defaults.OPTIMIZER
    seed: int = defaults.SEED
    data_locations: tuple[str, ...] = ()
    label_column: str = defaults.LABEL_COLUMN
    feature_columns: str = defaults.FEATURE_COLUMNS
    data_timeout: float = defaults.DATA_TIMEOUT
    strategy: str = defaults.STRATEGY
    strategy_options: dict[str, Any] = field(default_factory=dict)
    # Recorded in params.json; the server gets it through extra_server_args, as the
    # strategy options.
    secure_aggregation: SecAggParams | None = None
    asynchronous: AsyncParams | None = None
    # Stragglers for benchmarks and tests: client index -> slow-down factor of its fits.
    slow_clients: dict[int, float] = field(default_factory=dict)
    trainer: str = defaults.TRAINER
    output: Path = Path("runs/local")
    join_timeout: float = defaults.JOIN_TIMEOUT
    round_timeout: float = defaults.ROUND_TIMEOUT
    timeout: float = defaults.LOCAL_RUN_TIMEOUT
    extra_server_args: list[str] = field(default_factory=list)

    def params(self) -> dict[str, Any]:
        values = asdict(self)
        values["output"] = str(self.output)
        values.pop("extra_server_args")
        return values


@dataclass
class LocalRunResult:
    history: dict[str, Any]
    output: Path
    files: dict[str, Path]


class LocalRun:
    """One local federation from start to outputs."""

    def __init__(self, options: LocalRunOptions, emit: Callable[[str], None] = print) -> None:
        self.options = options
        self.emit = emit
        self.output = Path(options.output)
        self.logs = self.output / "logs"
        self.server: Child | None = None
        self.clients: list[Child] = []
        # Fresh credentials per run, one per client and one for the progress reporter, as
        # files the children read (never a command line); removed when the run ends.
        self.credentials = self.output / CREDENTIALS_FOLDER
        # A token in the user's environment must not reach the children.
        self.child_env: dict[str, str | None] = {TOKEN_ENV: None}

    # ------------------------------------------------------------------ phases

    def run(self) -> LocalRunResult:
        opts = self.options
        self.output.mkdir(parents=True, exist_ok=True)
        files.write_json(self.output / "params.json", opts.params())
        deadline = time.monotonic() + opts.timeout
        try:
            observer = self._issue_credentials()
            port = self._start_server()
            url = f"http://127.0.0.1:{port}"
            self.emit(
                f"server on {url}; starting {opts.clients} {opts.trainer} clients "
                f"({opts.dataset}, {opts.partition}, {opts.model}); logs in {self.logs}"
            )
            self._start_clients(url)
            self._supervise(
                ProgressReporter(url, opts.clients, opts.rounds, self.emit, observer.token),
                deadline,
            )
            self._wait_clients()
        finally:
            processes.stop_all([c for c in [self.server, *self.clients] if c is not None])
            shutil.rmtree(self.credentials, ignore_errors=True)
        history = json.loads((self.output / "history.json").read_text())
        outputs = {
            "weights": self.output / "weights.safetensors",
            "history": self.output / "history.json",
        }
        if exports_keras(opts.trainer):
            outputs["model"] = self._export_keras()
        outputs["report"] = self._write_report(history)
        return LocalRunResult(history, self.output, outputs)

    def _issue_credentials(self) -> ClientCredential:
        """One credential folder per client and a registry for the server; the observer's."""
        registry, credentials = issue_many(str(i) for i in range(self.options.clients))
        observer = issue(PROGRESS_OBSERVER)
        registry.enrol(observer, role=OBSERVER).save(self.credentials / REGISTRY_FILE)
        for credential in credentials:
            write_credential_dir(credential, self.credentials / credential.client_id)
        return observer

    def _start_server(self) -> int:
        opts = self.options
        args = [
            "--clients",
            str(opts.clients),
            "--rounds",
            str(opts.rounds),
            "--client-ids",
            ",".join(str(i) for i in range(opts.clients)),
            "--strategy",
            opts.strategy,
            "--output",
            str(self.output),
            "--join-timeout",
            str(opts.join_timeout),
            "--round-timeout",
            str(opts.round_timeout),
            "--credentials",
            str(self.credentials / REGISTRY_FILE),
            *opts.extra_server_args,
        ]
        if opts.min_clients is not None:
            args += ["--min-clients", str(opts.min_clients)]
        try:
            self.server, port = processes.start_server(
                args, self.output / ".server-ready.json", self.logs / "server.log", self.child_env
            )
        except processes.ServerStartError as exc:
            raise LocalRunError(str(exc)) from None
        return port

    def _start_clients(self, url: str) -> None:
        opts = self.options
        for i in range(opts.clients):
            args = [
                "client",
                "--server",
                url,
                "--credential",
                str(self.credentials / str(i)),
                "--client-id",
                str(i),
                "--num-clients",
                str(opts.clients),
                "--trainer",
                opts.trainer,
                "--dataset",
                opts.dataset,
                "--partition",
                opts.partition,
                "--model",
                opts.model,
                "--local-epochs",
                str(opts.local_epochs),
                "--batch-size",
                str(opts.batch_size),
                "--learning-rate",
                str(opts.learning_rate),
                "--optimizer",
                opts.optimizer,
                "--seed",
                str(opts.seed),
                "--data-locations",
                json.dumps(list(opts.data_locations)),
                "--label-column",
                opts.label_column,
                "--feature-columns",
                opts.feature_columns,
                "--data-timeout",
                str(opts.data_timeout),
                "--retry-timeout",
                "60",
                "--summary",
                str(self.output / "clients" / f"client-{i}.json"),
            ]
            if i in opts.slow_clients:
                args += ["--slowdown", str(opts.slow_clients[i])]
            log_path = self.logs / f"client-{i}.log"
            self.clients.append(processes.start(f"client {i}", args, log_path, self.child_env))

    def _supervise(self, reporter: ProgressReporter, deadline: float) -> None:
        """Watch the children until the server exits; a failing client ends the run
        once the clients still running are fewer than the quorum."""
        opts = self.options
        quorum = defaults.quorum(opts.clients, opts.min_clients)
        assert self.server is not None
        lost: list[Child] = []

        def client_failed(client: Child, message: str) -> None:
            lost.append(client)
            if opts.clients - len(lost) < quorum:
                raise LocalRunError(message)
            self.emit(f"warning: {message}\ncontinuing: min_clients={quorum} still reachable")

        supervise(
            self.server,
            self.clients,
            reporter,
            deadline,
            PACE,
            client_failed,
            LocalRunError,
            f"the run did not finish within --timeout {opts.timeout:g}s",
        )

    def _wait_clients(self) -> None:
        grace = time.monotonic() + 60
        for client in self.clients:
            try:
                client.proc.wait(max(0.1, grace - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.emit(f"warning: {client.name} still running after the server finished")

    def _export_keras(self) -> Path:
        target = self.output / "model.keras"
        opts = self.options
        command = [
            sys.executable,
            "-m",
            "fl_kubeflow.training.export",
            "--weights",
            str(self.output / "weights.safetensors"),
            "--model",
            opts.model,
            "--dataset",
            # Only the format matters to the export; a table's shapes come from the weights.
            opts.data_locations[0] if opts.data_locations else opts.dataset,
            "--output",
            str(target),
        ]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=EXPORT_TIMEOUT_S,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        if done.returncode != 0:
            raise LocalRunError(f"exporting model.keras failed:\n{done.stderr.strip()[-2000:]}")
        return target

    def _write_report(self, history: dict[str, Any]) -> Path:
        from fl_kubeflow.report import write_report

        target = self.output / "report.html"
        write_report(history, self.options.params(), target)
        return target


def summary_lines(history: dict[str, Any]) -> list[str]:
    """A table of the run, one row per round, for the terminal; a secure round's row is
    followed by its secure-aggregation facts, an async version's (docs/asynchronous.md)
    by its contributors' staleness."""
    from fl_kubeflow.report import round_word, secure_facts, secure_summary, staleness_line

    word = round_word(history)
    w = len(word)  # the first column is as wide as its header: "round" or "version"
    lines = [f"{word}  clients  examples  train                        evaluation"]
    for record in history["rounds"]:
        evaluation = (record.get("evaluate") or {}).get("metrics")
        if record["round"] == 0:
            lines.append(
                f"{0:>{w}}  {'':>7}  {'':>8}  {'(initial model)':<27}  {fmt_metrics(evaluation)}"
            )
            continue
        # A secure round under uniform weighting (central DP) has no example count.
        examples = record.get("num_examples")
        lines.append(
            f"{record['round']:>{w}}  {len(record['contributors']):>7}  "
            f"{'-' if examples is None else examples:>8}"
            f"  {fmt_metrics(record['train']):<27}  {fmt_metrics(evaluation)}"
        )
        facts = secure_facts(record)
        if facts is not None:
            lines.append(f"{'':>{w}}  {secure_summary(facts)}")
        stale = staleness_line(record)
        if stale is not None:
            lines.append(f"{'':>{w}}  {stale}")
    return lines
