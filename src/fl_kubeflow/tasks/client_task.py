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
from fl_kubeflow.client.trainer import Trainer
from fl_kubeflow.credentials import (
    ClientCredential,
    CredentialError,
    CredentialFolder,
    open_credential_dir,
)
from fl_kubeflow.kube.credential_secrets import fetch_run_credential
from fl_kubeflow.kube.naming import DEFAULT_PORT, server_url
from fl_kubeflow.kube.service import DEFAULT_TOKEN_DIR, discover_server_url
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


def join_federation(
    trainer: Trainer,
    *,
    run_id: str,
    client_id: int | str,
    server_address: str = "",
    port: int = DEFAULT_PORT,
    retry_timeout: float = defaults.RETRY_TIMEOUT,
    round_wait_timeout: float = defaults.ROUND_WAIT_TIMEOUT,
    summary_path: str | os.PathLike[str] | None = None,
    token_dir: str | os.PathLike[str] = DEFAULT_TOKEN_DIR,
    credential_dir: str | os.PathLike[str] | None = None,
) -> ClientTaskResult:
    """Take part in a federated run with your own trainer, until the server says it is done.

    The one call a KFP component of your own makes to act as a federated client: build
    a trainer (anything with the ``fl_kubeflow.client.Trainer`` methods) from your model
    and data, then pass it here. In a pipeline run's pod the server is found through the
    run's Service and this client's credential through its Secret, exactly as the built-in
    client does; give ``server_address`` to reach a server elsewhere and ``credential_dir``
    (a mounted credential Secret) to be known by your own credential. See docs/trainers.md.

    Before the first round the server's model is compared with
    ``trainer.initial_weights()`` (tensor names, shapes and dtypes); if a server has no
    model yet, the first client's initial weights become it.

    Args:
        trainer: The model and data of this client: ``initial_weights``, ``fit`` and
            ``evaluate`` as ``fl_kubeflow.client.Trainer`` documents them.
        run_id: The pipeline run's id (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``), which names
            the server's Service ``fl-<run_id>`` and the client's credential Secret.
        client_id: This client's id in the run: one of the server's client ids, which
            for the built-in pipeline are 0..num_clients-1.
        server_address: The server's URL (or host:port); empty: this run's in-cluster
            Service.
        port: The server's port when its address comes from the run id.
        retry_timeout: Seconds to keep retrying an unreachable server (it may start after
            this client does).
        round_wait_timeout: Longest wait in seconds for the next round to open.
        summary_path: If given, this client's per-round metrics are written there as JSON.
        token_dir: Where the pod's service-account token is (tests point it elsewhere).
        credential_dir: A credential folder or mounted credential Secret (``client_id``,
            ``token``, optional ``ca.crt`` trusted for HTTPS and ``server``, the default
            address); its client id is this client's id in the run.

    Returns:
        The client's per-round training and evaluation metrics (``summary``), and the
        final ones as scalars for a KFP Metrics artifact (``metrics``).

    Raises:
        ClientTaskError: the run could not be joined, the server's model does not match
            the trainer's, ``trainer`` is not a Trainer, the run failed, or the client
            refused a secure round (SecAggViolation); the message says which, with the
            server's reason when it gave one.
    """
    from fl_kubeflow.client.federated_client import FederatedClient, FederationFailed
    from fl_kubeflow.client.secure_aggregation import SecAggViolation
    from fl_kubeflow.client.signature import ModelMismatch
    from fl_kubeflow.client.transport import ServerError, ServerUnreachable
    from fl_kubeflow.training.factory import TrainerFactoryError, check_trainer

    try:
        check_trainer(trainer, "join_federation was given")
    except TrainerFactoryError as exc:
        raise ClientTaskError(f"client {client_id}: {exc}") from exc
    own = _own_credential(credential_dir, client_id)
    if own is not None:
        client_id = own.credential.client_id
    url = resolve_server_address(
        _address(server_address, own, client_id), run_id, port, token_dir=token_dir
    )
    log.info("client %s: server %s", client_id, url)

    def fetch() -> ClientCredential | None:
        return fetch_run_credential(
            run_id, str(client_id), timeout=retry_timeout, token_dir=token_dir
        )

    def refresh() -> dict[str, str]:
        # An updated mounted Secret, or a server pod that lost its Secrets (deleted with
        # its pod) and made new ones: read the credential again.
        again = _own_credential(credential_dir, client_id).credential if own else fetch()
        return {"Authorization": again.authorization} if again else {}

    legacy = read_token()
    try:
        credential = own.credential if own else (None if legacy else fetch())
    except (TimeoutError, CredentialError) as exc:
        raise ClientTaskError(f"client {client_id}: {exc}") from exc
    if credential is not None:
        headers = {"Authorization": credential.authorization}
    else:
        headers = auth_headers(legacy)
        if legacy is None:
            log.warning(
                "no credential (no credential_dir, not in a pod, %s unset): talking to the "
                "server without authentication",
                TOKEN_ENV,
            )
    client = FederatedClient(
        url,
        str(client_id),
        trainer,
        retry_timeout=retry_timeout,
        round_wait_timeout=round_wait_timeout,
        headers=headers,
        verify=str(own.ca_file) if own and own.ca_file else True,
        refresh_headers=refresh if credential is not None else None,
    )
    try:
        summary = client.run()
    except FederationFailed as exc:
        raise ClientTaskError(f"client {client_id}: the run failed: {exc}") from exc
    except ModelMismatch as exc:
        raise ClientTaskError(str(exc)) from exc
    except SecAggViolation as exc:
        raise ClientTaskError(f"client {client_id} refused the secure round: {exc}") from exc
    except (ServerError, ServerUnreachable, TimeoutError) as exc:
        raise ClientTaskError(f"client {client_id}: {exc}") from exc

    result = ClientTaskResult(summary.to_dict(), summary_metrics(summary.to_dict()))
    if summary_path is not None:
        files.write_json(Path(summary_path), result.summary)
    return result


def run_client_task(
    *,
    run_id: str,
    client_id: int,
    num_clients: int,
    server_address: str = "",
    port: int = DEFAULT_PORT,
    trainer: str = defaults.TRAINER,
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
    credential_dir: str | os.PathLike[str] | None = None,
) -> ClientTaskResult:
    """Take part in the run as client ``client_id`` with the trainer ``trainer`` names.

    ``trainer`` is ``keras``, ``torch`` or ``MODULE:FACTORY`` (training.factory); the
    trainer is built from the other options (``data_locations``, a JSON list with one
    location per client, and the table options are those of ``TrainerOptions``), so its
    data is loaded, and a bad location fails, before :func:`join_federation` takes it
    into the run. ``client_id`` picks the data shard; with ``credential_dir`` (see
    :func:`join_federation`) the client is known by that credential's id.

    Raises ClientTaskError (with the server's reason when it has one) if the trainer
    cannot be built, the run cannot be joined or it fails.
    """
    from fl_kubeflow.training.factory import TrainerFactoryError, build_trainer
    from fl_kubeflow.training.options import TrainerOptions

    if not 0 <= client_id < num_clients:
        raise ClientTaskError(f"client_id {client_id} must be in 0..{num_clients - 1}")
    # Resolved first: a client that cannot find its server fails before any framework loads.
    own = _own_credential(credential_dir, client_id)
    url = resolve_server_address(
        _address(server_address, own, client_id), run_id, port, token_dir=token_dir
    )
    log.info("client %d of %d: trainer %s", client_id, num_clients, trainer)
    from fl_kubeflow.training.datasets import parse_data_locations

    try:
        options = TrainerOptions(
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
        # Imports the trainer's framework here, in the client pod only (seconds, ~600 MB).
        built = build_trainer(trainer, options)
    except TrainerFactoryError as exc:
        raise ClientTaskError(f"client {client_id}: {exc}") from exc
    except TimeoutError as exc:
        raise ClientTaskError(f"client {client_id}: {exc}") from exc
    except ValueError as exc:
        raise ClientTaskError(f"client {client_id}: bad options: {exc}") from exc
    return join_federation(
        built,
        run_id=run_id,
        client_id=client_id,
        server_address=url,
        port=port,
        retry_timeout=retry_timeout,
        round_wait_timeout=round_wait_timeout,
        summary_path=summary_path,
        token_dir=token_dir,
        credential_dir=credential_dir,
    )


def _own_credential(
    folder: str | os.PathLike[str] | None, client_id: int | str
) -> CredentialFolder | None:
    """The credential in ``folder`` (a mounted Secret); None without a folder."""
    if not folder:
        return None
    try:
        return open_credential_dir(folder)
    except CredentialError as exc:
        raise ClientTaskError(f"client {client_id}: {exc}") from exc


def _address(server_address: str, own: CredentialFolder | None, client_id: int | str) -> str:
    """The server address given, else the credential's; a credential's client needs one.

    A client with its own credential runs outside the server's run (another namespace or
    cluster): the run's in-cluster Service, derived from the run id, is not its server.
    """
    if server_address or own is None:
        return server_address
    if not own.server:
        raise ClientTaskError(
            f"client {client_id}: no server address: set server_address, or issue the "
            "credential with the server's address (fl-kubeflow credentials issue --server)"
        )
    return own.server


def summary_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """Scalars for a KFP Metrics artifact: final local evaluation and participation.

    ``client_id`` is there when it is a number (an all-in-one run's); a credential's id
    such as ``hospital-a`` is no scalar (it is in the client's log).
    """
    client_id = str(summary.get("client_id", "-1"))
    metrics: dict[str, float] = {
        **({"client_id": float(client_id)} if client_id.lstrip("-").isdigit() else {}),
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
