"""What one client pod of the pipeline does: find the server, train, report metrics.

Called by the ``fl-client`` KFP component; plain Python (no kfp import), so it can be
run and tested without KFP.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fl_kubeflow import defaults, files
from fl_kubeflow.auth import TOKEN_ENV, auth_headers, read_token
from fl_kubeflow.kube.naming import DEFAULT_PORT, server_url
from fl_kubeflow.kube.service import DEFAULT_TOKEN_DIR, discover_server_url
from fl_kubeflow.kube.token_secret import fetch_run_token
from fl_kubeflow.tasks.params import integer_param

log = logging.getLogger("fl_kubeflow.tasks.client")


class ClientTaskError(RuntimeError):
    """The client could not take part in the run; the message says why."""


@dataclass
class ClientTaskResult:
    """A client's summary (per-round metrics) and the scalars worth logging."""

    summary: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)


def client_ids(num_clients: int) -> list[int]:
    """``[0, 1, ..., N-1]``: the items the pipeline's ParallelFor fans out over."""
    num_clients = integer_param("num_clients", num_clients)
    if num_clients < 1:
        raise ValueError(f"num_clients must be at least 1, got {num_clients}")
    return list(range(num_clients))


def resolve_server_address(
    server_address: str,
    run_id: str,
    port: int = DEFAULT_PORT,
    *,
    token_dir: str | os.PathLike[str] = DEFAULT_TOKEN_DIR,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The server URL: the override if given, else this run's in-cluster Service URL.

    The Service lives in the client's own namespace (the server creates it in its own,
    and a run's pods share one). Outside a cluster there is nothing to derive it from.
    """
    address = (server_address or "").strip()
    if address:
        # Accept "host:port" as well as a full URL: it is typed into a UI form.
        return address if "://" in address else f"http://{address}"
    url = discover_server_url(run_id, port, token_dir=token_dir, environ=environ)
    if url is not None:
        return url
    env = os.environ if environ is None else environ
    namespace = env.get("POD_NAMESPACE", "").strip()
    if namespace:
        return server_url(run_id, namespace, port)
    raise ClientTaskError(
        "no server address: not running in a Kubernetes pod (no service-account token in "
        f"{token_dir}, no POD_NAMESPACE) and server_address is empty; pass server_address, "
        "e.g. http://127.0.0.1:8080"
    )


def run_client_task(
    *,
    run_id: str,
    client_id: int,
    num_clients: int,
    server_address: str = "",
    port: int = DEFAULT_PORT,
    dataset: str = defaults.DATASET,
    partition: str = defaults.PARTITION,
    model: str = defaults.MODEL,
    local_epochs: int = defaults.LOCAL_EPOCHS,
    batch_size: int = defaults.BATCH_SIZE,
    learning_rate: float = defaults.LEARNING_RATE,
    optimizer: str = defaults.OPTIMIZER,
    seed: int = defaults.SEED,
    data_locations: str | Sequence[str] = "[]",
    label_column: str = defaults.LABEL_COLUMN,
    feature_columns: str = defaults.FEATURE_COLUMNS,
    data_timeout: float = defaults.DATA_TIMEOUT,
    retry_timeout: float = defaults.RETRY_TIMEOUT,
    round_wait_timeout: float = defaults.ROUND_WAIT_TIMEOUT,
    summary_path: str | os.PathLike[str] | None = None,
    token_dir: str | os.PathLike[str] = DEFAULT_TOKEN_DIR,
) -> ClientTaskResult:
    """Take part in the run as client ``client_id`` and return what it did.

    ``data_locations`` (a JSON list, one per client) and the table options are those of
    ``TrainerOptions``; the data is loaded, and a bad location fails, before joining.

    Raises ClientTaskError (with the server's reason when it has one) if the run
    cannot be joined or fails.
    """
    from fl_kubeflow.client.federated_client import FederatedClient, FederationFailed
    from fl_kubeflow.client.transport import ServerError, ServerUnreachable

    if not 0 <= client_id < num_clients:
        raise ClientTaskError(f"client_id {client_id} must be in 0..{num_clients - 1}")
    url = resolve_server_address(server_address, run_id, port, token_dir=token_dir)
    log.info("client %d of %d: server %s", client_id, num_clients, url)

    # Keras is imported here, in the client pod only (seconds and ~600 MB).
    from fl_kubeflow.training.datasets import parse_data_locations
    from fl_kubeflow.training.keras_trainer import KerasTrainer, TrainerOptions

    try:
        trainer = KerasTrainer(
            TrainerOptions(
                dataset=dataset,
                partition=partition,
                model=model,
                client_id=client_id,
                num_clients=num_clients,
                local_epochs=local_epochs,
                batch_size=batch_size,
                learning_rate=learning_rate,
                optimizer=optimizer,
                seed=seed,
                data_locations=parse_data_locations(data_locations),
                label_column=label_column,
                feature_columns=feature_columns,
                data_timeout=data_timeout,
            )
        )

        def refresh() -> dict[str, str]:
            return auth_headers(fetch_run_token(run_id, timeout=retry_timeout, token_dir=token_dir))

        token = read_token() or fetch_run_token(run_id, timeout=retry_timeout, token_dir=token_dir)
        if token is None:
            log.warning(
                "no run token (%s unset, not in a pod): talking to the server "
                "without authentication",
                TOKEN_ENV,
            )
        client = FederatedClient(
            url,
            str(client_id),
            trainer,
            retry_timeout=retry_timeout,
            round_wait_timeout=round_wait_timeout,
            headers=auth_headers(token),
            # A replaced server pod (retry, eviction) makes a new token: read it again.
            refresh_headers=None if token is None or read_token() else refresh,
        )
    except ValueError as exc:
        raise ClientTaskError(f"client {client_id}: bad options: {exc}") from exc
    except TimeoutError as exc:
        raise ClientTaskError(f"client {client_id}: {exc}") from exc
    try:
        summary = client.run()
    except FederationFailed as exc:
        raise ClientTaskError(f"client {client_id}: the run failed: {exc}") from exc
    except (ServerError, ServerUnreachable, TimeoutError) as exc:
        raise ClientTaskError(f"client {client_id}: {exc}") from exc

    result = ClientTaskResult(summary.to_dict(), summary_metrics(summary.to_dict()))
    if summary_path is not None:
        files.write_json(Path(summary_path), result.summary)
    return result


def summary_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """Scalars for a KFP Metrics artifact: final local evaluation and participation."""
    metrics: dict[str, float] = {
        "client_id": float(summary.get("client_id", -1)),
        "rounds_trained": float(len(summary.get("rounds_trained", []))),
        "stale_rounds": float(len(summary.get("stale_rounds", []))),
        "final_round": float(summary.get("final_round", 0)),
    }
    evaluations = summary.get("evaluate") or {}
    if evaluations:
        last = evaluations[max(evaluations, key=int)]
        for key in ("accuracy", "loss"):
            if isinstance(last.get(key), (int, float)):
                metrics[key] = float(last[key])
    return metrics
