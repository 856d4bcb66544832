"""What the server pod of the pipeline does: publish its Service, serve, write outputs.

Called by the ``fl-server`` KFP component; plain Python (no kfp, no TensorFlow: the
``.keras`` export runs in a subprocess), so it can be run and tested without KFP.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fl_kubeflow import defaults, files
from fl_kubeflow.async_params import SYNC
from fl_kubeflow.auth import TOKEN_ENV, read_token
from fl_kubeflow.credentials import CredentialError, Registry
from fl_kubeflow.kube.naming import DEFAULT_PORT
from fl_kubeflow.kube.service import (
    DEFAULT_TOKEN_DIR,
    NODE_IP_ENV,
    RunService,
    publish_run_service,
)
from fl_kubeflow.tasks.durations import DEFAULT_EXPORT_TIMEOUT
from fl_kubeflow.tasks.server_access import (
    REGISTRY_FILE,
    AccessError,
    issue_run_registry,
    registry_sync,
    tls_files,
)

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api

    from fl_kubeflow.async_params import AsyncParams
    from fl_kubeflow.secagg.params import SecAggParams

log = logging.getLogger("fl_kubeflow.tasks.server")

KERAS_FILE = "model.keras"
WEIGHTS_FILE = "weights.safetensors"  # as written by fl_kubeflow.server.serve
# Restarts of a crashed server process inside its pod (with checkpoints only).
DEFAULT_MAX_RESTARTS = 2


class ServerTaskError(RuntimeError):
    """The federated run (or writing its outputs) failed; the message says why."""


@dataclass
class ServerTaskResult:
    """What the component logs to its artifacts."""

    history: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    model_metadata: dict[str, Any] = field(default_factory=dict)
    keras_path: Path | None = None
    weights_path: Path | None = None


def resolve_initial_weights(path: str | os.PathLike[str] | None) -> Path | None:
    """The safetensors file inside an initial-model artifact, or None if there is none.

    Accepts a safetensors file, or a folder holding ``weights.safetensors`` (the Model
    artifact of an earlier run). A ``.keras`` file is refused: reading it needs
    TensorFlow, which the server never imports.
    """
    if path is None or not str(path):
        return None
    candidate = Path(path)
    if candidate.is_dir():
        candidate = candidate / WEIGHTS_FILE
    if not candidate.is_file():
        raise ServerTaskError(
            f"initial model {str(path)!r}: expected a safetensors file or a folder with "
            f"{WEIGHTS_FILE} (the Model artifact of an earlier fl-server run)"
        )
    if candidate.suffix == ".keras":
        raise ServerTaskError(
            f"initial model {str(path)!r} is a .keras file; give the {WEIGHTS_FILE} "
            "written next to it (the server reads safetensors only)"
        )
    return candidate


def parse_strategy_options(value: str | Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline's strategy_options: a JSON object (text) or a mapping."""
    if isinstance(value, Mapping):
        return dict(value)
    try:
        options = json.loads(value or "{}")
    except json.JSONDecodeError as exc:
        raise ServerTaskError(f"strategy_options {value!r} is not JSON: {exc}") from None
    if not isinstance(options, dict):
        raise ServerTaskError(f"strategy_options must be a JSON object, got {value!r}")
    return options


def option_pairs(options: str | Mapping[str, Any], parameter: str) -> dict[str, Any]:
    """A pipeline parameter of options, "name=value,..." (or a mapping), as a dict.

    Raises ValueError naming ``parameter`` for an entry that is not name=value.
    """
    from fl_kubeflow.strategies.options import parse_option_pairs

    if isinstance(options, Mapping):
        return dict(options)
    pairs = [pair for pair in options.split(",") if pair.strip()]
    return parse_option_pairs(pairs, kind=f"{parameter} entry")


def asynchronous_params(mode: str, options: str | Mapping[str, Any] = "") -> AsyncParams | None:
    """The pipeline's mode ("sync" or "async") and async_options ("name=value,..." or a
    mapping, names of ``async_params.OPTION_NAMES``) as the run's AsyncParams; None for
    synchronous rounds.

    Raises ServerTaskError naming the option at fault, or options without mode=async.
    """
    from fl_kubeflow.async_params import ASYNC, MODES, AsyncParams

    try:
        if mode not in MODES:
            raise ValueError(f"mode must be {' or '.join(MODES)}, got {mode!r}")
        values = option_pairs(options, "async_options")
        if mode != ASYNC:
            if values:
                raise ValueError(f"async_options {options!r} need mode={ASYNC}")
            return None
        return AsyncParams.from_options(values)
    except ValueError as exc:
        raise ServerTaskError(f"asynchronous mode: {exc}") from exc


def secure_aggregation_params(
    enabled: bool, options: str | Mapping[str, Any] = ""
) -> SecAggParams | None:
    """The pipeline's secure_aggregation and secagg_options ("name=value,..." or a
    mapping, names of ``secagg.params.OPTION_NAMES``) as the run's SecAggParams.

    Raises ServerTaskError naming the option at fault, or options without the switch.
    """
    from fl_kubeflow.secagg.params import SecAggParams

    try:
        values = option_pairs(options, "secagg_options")
        if not enabled:
            if values:
                raise ValueError(f"secagg_options {options!r} need secure_aggregation=true")
            return None
        return SecAggParams.from_options(values)
    except ValueError as exc:
        raise ServerTaskError(f"secure aggregation: {exc}") from exc


def run_server_task(
    *,
    run_id: str,
    num_clients: int,
    num_rounds: int,
    model_dir: str | os.PathLike[str],
    min_clients: int = defaults.MIN_CLIENTS,
    join_timeout: float = defaults.JOIN_TIMEOUT,
    round_timeout: float = defaults.ROUND_TIMEOUT,
    strategy: str = defaults.STRATEGY,
    strategy_options: str | Mapping[str, Any] = "{}",
    secure_aggregation: bool = False,
    secagg_options: str | Mapping[str, Any] = "",
    mode: str = SYNC,
    async_options: str | Mapping[str, Any] = "",
    port: int = DEFAULT_PORT,
    trainer: str = defaults.TRAINER,
    dataset: str = defaults.DATASET,
    data_locations: str | Sequence[str] = "[]",
    model: str = defaults.MODEL,
    initial_model: str | os.PathLike[str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    report_path: str | os.PathLike[str] | None = None,
    summary_path: str | os.PathLike[str] | None = None,
    params: Mapping[str, Any] | None = None,
    export_timeout: float = DEFAULT_EXPORT_TIMEOUT,
    token_dir: str | os.PathLike[str] = DEFAULT_TOKEN_DIR,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    service_name: str = "",
    service_type: str = "ClusterIP",
    node_port: int = 0,
    tls_dir: str | os.PathLike[str] | None = None,
    tls_secret: str = "",
    allow_plaintext: bool = False,
    credentials_secret: str = "",
    credentials_reload: float = defaults.CREDENTIALS_RELOAD,
    address_path: str | os.PathLike[str] | None = None,
    core_v1_api: CoreV1Api | None = None,
) -> ServerTaskResult:
    """Serve one federated run and write its outputs.

    ``model_dir`` receives ``weights.safetensors``, ``history.json`` and, when the
    clients' ``trainer`` is the built-in Keras one, ``model.keras`` (rebuilt from
    ``model`` and ``dataset``; other trainers' models need their own code to load the
    weights, named in the metadata's ``trainer``). ``report_path`` receives the HTML
    report, ``summary_path`` a Markdown summary. In a pod the per-run Service is created
    first and deleted at the end. ``min_clients=0`` means all.
    With ``checkpoint_dir`` (a mounted volume), the run is saved into
    ``checkpoint_dir/<run_id>`` after every round, and a replacement server pod of the
    same run resumes from there. The federation runs in a child process
    (``fl_kubeflow.tasks.server_process``); with checkpoints, one that crashes (killed,
    OOM) is restarted in this pod from the checkpoint, at most ``max_restarts`` times.

    ``dataset`` or, when given, the clients' ``data_locations`` (a JSON list) tell the
    export the data's format: a table's shapes come from the weights, unread.

    Access (``tasks.server_access``): ``service_type`` ClusterIP, NodePort or
    LoadBalancer (``node_port`` 0: any), named ``service_name`` (default ``fl-<run_id>``);
    HTTPS when ``tls_dir`` holds ``tls.crt`` and ``tls.key`` (required beyond ClusterIP
    unless ``allow_plaintext``). Clients are known by the registry in Secret
    ``credentials_secret``, re-read every ``credentials_reload`` seconds (revocations take
    effect during the run); without one, the server issues a credential Secret per client
    id 0..N-1 (the all-in-one pipeline). The address to hand to clients is logged and
    written to ``address_path``. ``core_v1_api`` replaces the pod's API client (tests).

    ``secure_aggregation`` runs every round with SecAgg+ (docs/secure_aggregation.md),
    ``secagg_options`` ("name=value,...": bits, range, max_weight, dropout_fraction,
    corrupt_fraction, timeout) tuning it; refused with the strategy before anything starts
    if the two cannot work together. ``mode="async"`` runs FedBuff's asynchronous
    versions (docs/asynchronous.md), ``async_options`` ("name=value,...": buffer_size,
    max_concurrency, staleness_exponent, max_staleness, server_learning_rate) tuning it.

    Raises ServerTaskError with the server's reason if the run fails; the history,
    report and summary are written first, so a failed run can still be inspected.
    """
    from fl_kubeflow import strategies
    from fl_kubeflow.server.config import ServerConfig
    from fl_kubeflow.tasks.server_process import ServerProcessError, serve_in_child
    from fl_kubeflow.training.datasets import parse_data_locations
    from fl_kubeflow.training.factory import exports_keras, framework

    options = parse_strategy_options(strategy_options)
    secagg = secure_aggregation_params(secure_aggregation, secagg_options)
    asynchronous = asynchronous_params(mode, async_options)
    try:
        locations = parse_data_locations(data_locations)
    except ValueError as exc:
        raise ServerTaskError(str(exc)) from exc
    try:
        # Checked here so a bad strategy fails before the Service exists; the server
        # process builds its own from the config.
        strategies.build(
            strategy,
            options,
            num_clients=num_clients,
            min_clients=min_clients,
            secure_aggregation=secagg,
            asynchronous=asynchronous,
        )
    except ValueError as exc:
        raise ServerTaskError(f"strategy {strategy!r}: {exc}") from exc
    model_dir = Path(model_dir)
    try:
        tls = tls_files(tls_dir, service_type, allow_plaintext, tls_secret)
    except AccessError as exc:
        raise ServerTaskError(str(exc)) from exc
    scheme = "https" if tls else "http"
    pod = {"token_dir": token_dir, "core_v1_api": core_v1_api}
    with (
        tempfile.TemporaryDirectory(prefix="fl-access-") as folder,
        _credentials(
            run_id, num_clients, credentials_secret, credentials_reload, Path(folder), **pod
        ) as access,
    ):
        try:
            config = ServerConfig(
                num_clients=num_clients,
                num_rounds=num_rounds,
                min_clients=min_clients,
                join_timeout=join_timeout,
                round_timeout=round_timeout,
                port=port,
                initial_weights=resolve_initial_weights(initial_model),
                output_dir=model_dir,
                strategy=strategy,
                strategy_options=options,
                secure_aggregation=secagg,
                asynchronous=asynchronous,
                checkpoint_dir=Path(checkpoint_dir) / run_id if checkpoint_dir else None,
                tls_cert=tls[0] if tls else None,
                tls_key=tls[1] if tls else None,
                **access,
            )
        except ValueError as exc:
            raise ServerTaskError(f"bad server options: {exc}") from exc

        # Before serving: clients started alongside keep retrying until the Service resolves.
        try:
            service = publish_run_service(
                run_id,
                port,
                name=service_name,
                service_type=service_type,
                node_port=node_port,
                scheme=scheme,
                **pod,
            )
        except ValueError as exc:
            raise ServerTaskError(f"bad Service options: {exc}") from exc
        announcer = _AddressAnnouncer(service, scheme, port, join_timeout)
        try:
            try:
                result = serve_in_child(config, max_restarts=max_restarts)
            except (ValueError, ServerProcessError) as exc:  # e.g. an unreadable initial model
                raise ServerTaskError(str(exc)) from exc
        finally:
            announcer.stop()
            if address_path is not None:
                files.write_bytes(Path(address_path), (announcer.address or "").encode())
            if service is not None:
                try:
                    service.delete()
                except Exception as exc:
                    # The exit handler deletes it again; the run's own outcome matters more.
                    log.warning("could not delete Service %s: %s", service.name, exc)

    history = result.history
    all_params = {"run_id": run_id, **dict(params or {})}
    if report_path is not None:
        from fl_kubeflow.report import write_report

        write_report(history, all_params, report_path)
    metrics = history_metrics(history)
    if summary_path is not None:
        summary_file = Path(summary_path)
        summary_file.parent.mkdir(parents=True, exist_ok=True)
        summary_file.write_text(
            markdown_summary(history, metrics, announcer.address), encoding="utf-8"
        )
    if not result.ok:
        raise ServerTaskError(f"federated run failed: {result.error or history.get('error')}")
    if result.weights_path is None:
        raise ServerTaskError("the run finished but no final weights were written")

    keras_path = None
    if exports_keras(trainer):
        keras_path = export_keras_model(
            result.weights_path,
            model_dir / KERAS_FILE,
            model,
            locations[0] if locations else dataset,
            export_timeout,
        )
    metadata: dict[str, Any] = {
        "framework": framework(trainer),
        "trainer": trainer,
        "files": [*([KERAS_FILE] if keras_path else []), WEIGHTS_FILE, "history.json"],
        "model": model,
        "dataset": list(locations) if locations else dataset,
        "rounds": int(metrics.get("rounds", 0)),
        "clients": num_clients,
        "strategy": strategy,
    }
    if "accuracy" in metrics:
        metadata["accuracy"] = metrics["accuracy"]
    return ServerTaskResult(history, metrics, metadata, keras_path, result.weights_path)


def export_keras_model(
    weights: Path, output: Path, model: str, dataset: str, timeout: float
) -> Path:
    """Write ``model.keras`` in a child process, keeping TensorFlow out of the server."""
    command = [
        sys.executable,
        "-m",
        "fl_kubeflow.training.export",
        "--weights",
        str(weights),
        "--model",
        model,
        "--dataset",
        dataset,
        "--output",
        str(output),
    ]
    log.info("exporting %s", output)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ServerTaskError(f"exporting {output.name} took longer than {timeout:g}s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-20:])
        raise ServerTaskError(f"exporting {output.name} failed (exit {done.returncode}):\n{tail}")
    return output


def _last_evaluation(history: Mapping[str, Any]) -> tuple[int, dict[str, Any]] | None:
    for entry in reversed(history.get("rounds") or []):
        evaluation = entry.get("evaluate") if isinstance(entry, dict) else None
        if isinstance(evaluation, dict) and isinstance(evaluation.get("metrics"), dict):
            return int(entry.get("round", 0)), evaluation["metrics"]
    return None


def history_metrics(history: Mapping[str, Any]) -> dict[str, float]:
    """Scalars for a KFP Metrics artifact: final evaluation, rounds done, clients."""
    rounds = [r for r in history.get("rounds") or [] if isinstance(r, dict)]
    metrics: dict[str, float] = {
        "rounds": float(sum(1 for r in rounds if int(r.get("round", 0)) > 0)),
        "clients": float(history.get("num_clients") or 0),
    }
    last = _last_evaluation(history)
    if last is not None:
        for key in ("accuracy", "loss"):
            value = last[1].get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[key] = float(value)
    return metrics


def markdown_summary(
    history: Mapping[str, Any], metrics: Mapping[str, float], address: str | None = None
) -> str:
    """A short Markdown summary for the KFP UI's Markdown viewer."""
    from fl_kubeflow.report import (
        async_text,
        round_word,
        secure_rounds_text,
        staleness_cells,
    )

    status = history.get("status", "unknown")
    word = round_word(history)
    lines = [
        "# Federated learning run",
        "",
        f"**Status:** {status}",
        "",
        "| | |",
        "|---|---|",
        f"| strategy | {history.get('strategy', '-')} |",
        f"| clients | {history.get('num_clients', '-')} |",
        f"| {word}s completed | {int(metrics.get('rounds', 0))} of "
        f"{history.get('num_rounds', '-')} |",
    ]
    secure = secure_rounds_text(history)
    if secure:
        lines.append(f"| secure aggregation | {secure} |")
    mode = async_text(history)
    if mode:
        lines.append(f"| mode | {mode} |")
    last = _last_evaluation(history)
    if last is not None:
        for key in ("accuracy", "loss"):
            if key in metrics:
                lines.append(f"| final eval {key} ({word} {last[0]}) | {metrics[key]:.4f} |")
    stale = [
        (entry["round"], cells)
        for entry in history.get("rounds") or []
        if isinstance(entry, dict) and (cells := staleness_cells(entry)) is not None
    ]
    if stale:
        lines += [
            "",
            "## Staleness per version",
            "",
            "| version | mean | max | client: staleness (version it started from) |",
            "|---|---|---|---|",
            *(f"| {number} | {mean} | {most} | {named} |" for number, (named, mean, most) in stale),
        ]
    if history.get("error"):
        lines += ["", f"**Error:** {history['error']}"]
    if address:
        lines += ["", f"**Server address:** `{address}`"]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _credentials(
    run_id: str,
    num_clients: int,
    secret: str,
    reload: float,
    folder: Path,
    *,
    token_dir: str | os.PathLike[str],
    core_v1_api: CoreV1Api | None,
) -> Iterator[dict[str, Any]]:
    """The ServerConfig's access options: the registry file kept in sync, or the legacy token.

    Yields ``credentials``/``credentials_reload`` for a registry, ``token`` for the
    shared token a pod was given (FL_KUBEFLOW_TOKEN, kept one more release), or nothing
    (an open run: not in a pod).
    """
    path = folder / REGISTRY_FILE
    try:
        if secret:
            with registry_sync(secret, path, reload, token_dir=token_dir, core_v1_api=core_v1_api):
                registry = Registry.load(path)
                usable = set(registry.clients()) - registry.revoked
                if len(usable) < num_clients:
                    log.warning(
                        "the registry enrols %d usable clients but the run waits for %d: it "
                        "cannot start unless more are enrolled",
                        len(usable),
                        num_clients,
                    )
                yield {"credentials": path, "credentials_reload": reload}
            return
        token = read_token()
        if token:
            yield {"token": token}
            return
        if issue_run_registry(
            run_id, num_clients, path, token_dir=token_dir, core_v1_api=core_v1_api
        ):
            yield {"credentials": path, "credentials_reload": reload}
            return
    except (AccessError, CredentialError) as exc:
        raise ServerTaskError(str(exc)) from exc
    log.warning(
        "no credentials (not in a pod, no credentials_secret, %s unset): any client that "
        "reaches the server may join",
        TOKEN_ENV,
    )
    yield {}


class _AddressAnnouncer:
    """Logs the address to hand to clients; for a LoadBalancer, once one is assigned."""

    def __init__(self, service: RunService | None, scheme: str, port: int, wait: float) -> None:
        self.service = service
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None
        node_ip = os.environ.get(NODE_IP_ENV) or None
        if service is None:
            self.address: str | None = f"{scheme}://localhost:{port}"
            log.info("server address (not in a pod): %s", self.address)
            return
        self.node_ip = node_ip
        self.address = service.address(node_ip)
        if self.address is not None:
            self._announce()
            return
        log.info(
            "%s Service %s: waiting up to %gs for its address",
            service.service_type,
            service.name,
            wait,
        )
        self.thread = threading.Thread(target=self._wait, args=(wait,), daemon=True)
        self.thread.start()

    def _announce(self) -> None:
        assert self.service is not None
        log.info(
            "server address for the clients (%s Service %s/%s): %s",
            self.service.service_type,
            self.service.namespace,
            self.service.name,
            self.address,
        )

    def _wait(self, wait: float) -> None:
        assert self.service is not None
        deadline = time.monotonic() + wait
        while not self.stopped.wait(2.0) and time.monotonic() < deadline:
            try:
                self.address = self.service.address(self.node_ip)
            except Exception as exc:  # the API may fail for a while: try again
                log.debug("reading Service %s: %s", self.service.name, exc)
                continue
            if self.address is not None:
                self._announce()
                return
        if self.address is None:
            log.warning("Service %s got no address within %gs", self.service.name, wait)

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
