"""``fl-kubeflow client``: take part in a run as one client."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fl_kubeflow import defaults, files
from fl_kubeflow.auth import auth_headers, read_token
from fl_kubeflow.cli.options import (
    HelpFormatter,
    float_at_least_one,
    json_list,
    non_negative_int,
    positive_float,
    positive_int,
    shapes,
)
from fl_kubeflow.credentials import open_credential_dir, read_credential_dir

NUMPY_TRAINERS = ("numpy-linear", "numpy-delta")


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """What each client trains: shared with ``local``."""
    parser.add_argument(
        "--dataset",
        default=defaults.DATASET,
        help="digits (bundled, offline), mnist, fashion_mnist, cifar10, or a file: "
        "npz:/csv:/parquet:LOCATION (a path, http(s):// or s3:// URL) containing {client_id}",
    )
    parser.add_argument(
        "--data-locations",
        type=json_list,
        default="[]",
        metavar="JSON",
        help="one file dataset per client as a JSON list (client i reads entry i); "
        "replaces --dataset (docs/data.md)",
    )
    parser.add_argument(
        "--label-column", default=defaults.LABEL_COLUMN, help="a table's class-id column"
    )
    parser.add_argument(
        "--feature-columns",
        default=defaults.FEATURE_COLUMNS,
        help="a table's feature columns, comma-separated (empty: every other column)",
    )
    parser.add_argument(
        "--data-timeout",
        type=positive_float,
        default=defaults.DATA_TIMEOUT,
        help="seconds each remote read of a client's data file may take per attempt",
    )
    parser.add_argument(
        "--partition",
        default=defaults.PARTITION,
        help="split of a built-in dataset: iid or dirichlet:ALPHA",
    )
    parser.add_argument(
        "--model", default=defaults.MODEL, help="mlp, cnn, or a path to a .keras model"
    )
    parser.add_argument(
        "--local-epochs",
        type=positive_int,
        default=defaults.LOCAL_EPOCHS,
        help="epochs each client trains per round",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=defaults.BATCH_SIZE, help="local batch size"
    )
    parser.add_argument(
        "--learning-rate",
        type=positive_float,
        default=defaults.LEARNING_RATE,
        help="local learning rate",
    )
    parser.add_argument(
        "--optimizer",
        default=defaults.OPTIMIZER,
        choices=["sgd", "adam"],
        help="local optimizer (sgd uses momentum 0.9)",
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=defaults.SEED, help="seed for data and init"
    )


def add_client_timeouts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--retry-timeout",
        type=positive_float,
        default=defaults.RETRY_TIMEOUT,
        help="seconds to keep retrying an unreachable server (it may start after the client)",
    )
    parser.add_argument(
        "--round-wait-timeout",
        type=positive_float,
        default=defaults.ROUND_WAIT_TIMEOUT,
        help="longest wait for the next round to open",
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "client",
        help="run one federated client",
        description="Join a run, train each round, and stop when the server says finished.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--server",
        default=None,
        help="server URL, e.g. http://127.0.0.1:8080 (required unless --credential has one)",
    )
    parser.add_argument(
        "--client-id",
        type=non_negative_int,
        default=None,
        help="this client's index, 0..N-1, which also picks its data shard (default: 0, or "
        "the --credential's id if that is a number, which --client-id must then equal); "
        "with a --credential, the credential's id is the client's id in the run",
    )
    parser.add_argument(
        "--credential",
        type=Path,
        default=None,
        metavar="DIR",
        help="this client's credential folder or mounted Secret (fl-kubeflow credentials "
        "issue): its client_id and token; its ca.crt, if any, as the CA to trust; its "
        "server, if any, as the default --server",
    )
    parser.add_argument(
        "--num-clients",
        type=positive_int,
        default=1,
        help="clients in the run, to partition a built-in dataset",
    )
    parser.add_argument(
        "--trainer",
        default="keras",
        metavar="TRAINER",
        help="what trains: keras or torch (built-in models and datasets), MODULE:FACTORY "
        "(your factory(options) -> Trainer, importable here: docs/trainers.md), or "
        + " / ".join(NUMPY_TRAINERS)
        + " (TensorFlow-free test trainers)",
    )
    add_training_options(parser)
    add_client_timeouts(parser)
    parser.add_argument(
        "--summary", type=Path, default=None, help="write this client's metrics here as JSON"
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        default=None,
        help="PEM CA bundle to verify an https:// server against (default: system CAs)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="legacy: file holding the token all clients share (or set FL_KUBEFLOW_TOKEN; "
        "not used with --credential)",
    )
    parser.add_argument(
        "--wire-dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="send float32 tensors as this (default: as the server sends the model)",
    )
    parser.add_argument(
        "--slowdown",
        type=float_at_least_one,
        default=1.0,
        metavar="FACTOR",
        help="for benchmarks and tests only: make each fit take FACTOR times as long as "
        "it did (a straggler; sleeps FACTOR - 1 times the measured fit time after it)",
    )
    delta = parser.add_argument_group("numpy-delta trainer (tests and benchmarks)")
    delta.add_argument("--delta", type=float, default=0.0, help="added to every weight")
    delta.add_argument(
        "--num-examples", type=positive_int, default=1, help="example count reported"
    )
    # A string default goes through ``type`` like a given value, and shows as one in --help.
    delta.add_argument("--shapes", type=shapes, default="16x8,8", help="tensor shapes")
    delta.add_argument(
        "--fit-delay", type=float, default=0.0, help="seconds each fit sleeps (a slow client)"
    )
    delta.add_argument(
        "--eval-delay", type=float, default=0.0, help="seconds each evaluation sleeps"
    )
    delta.add_argument(
        "--slow-rounds",
        default=None,
        help="comma-separated rounds in which --fit-delay applies (default: every round)",
    )
    parser.set_defaults(run=run)


def build_trainer(args: argparse.Namespace):
    """The trainer named by --trainer; Keras is imported only here, only if chosen."""
    if args.trainer == "numpy-delta":
        from fl_kubeflow.client.numpy_trainers import DeltaTrainer

        return DeltaTrainer(
            shapes=args.shapes,
            delta=args.delta,
            num_examples=args.num_examples,
            seed=args.seed,
            fit_delay=args.fit_delay,
            eval_delay=args.eval_delay,
            slow_rounds=[int(r) for r in args.slow_rounds.split(",")] if args.slow_rounds else None,
            evaluate_rounds=True,
        )
    if args.trainer == "numpy-linear":
        from fl_kubeflow.client.numpy_trainers import LinearRegressionTrainer

        return LinearRegressionTrainer(
            client_id=args.client_id,
            learning_rate=args.learning_rate,
            local_epochs=args.local_epochs,
            seed=args.seed,
        )
    from fl_kubeflow.training.factory import build_trainer as build_from_spec
    from fl_kubeflow.training.options import TrainerOptions

    return build_from_spec(
        args.trainer,
        TrainerOptions(
            dataset=args.dataset,
            partition=args.partition,
            model=args.model,
            client_id=args.client_id,
            num_clients=args.num_clients,
            local_epochs=args.local_epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            optimizer=args.optimizer,
            seed=args.seed,
            data_locations=args.data_locations,
            label_column=args.label_column,
            feature_columns=args.feature_columns,
            data_timeout=args.data_timeout,
        ),
    )


@dataclass(frozen=True)
class _Identity:
    """Who this client is, what it presents, where it goes and whom it trusts."""

    client_id: str
    server: str
    headers: dict[str, str]
    refresh: Callable[[], dict[str, str]] | None
    ca_file: Path | None


def _identity(args: argparse.Namespace, parser: argparse.ArgumentParser) -> _Identity:
    """The client's id and credential from --credential, or --client-id and the shared token.

    Sets ``args.client_id`` (the data index) when --credential names it. Raises
    CredentialError (a ValueError) for a credential folder that cannot be used.
    """
    if args.credential is None:
        if args.server is None:
            parser.error("--server is required (or a --credential with a server address)")
        args.client_id = 0 if args.client_id is None else args.client_id
        token_file = args.token_file
        # A restarted server may have a new token: the file is read again on a 401.
        refresh = (lambda: auth_headers(read_token(token_file))) if token_file else None
        return _Identity(
            str(args.client_id), args.server, auth_headers(read_token(token_file)), refresh, None
        )
    if args.token_file is not None:
        parser.error("--credential and --token-file: give one")
    folder = open_credential_dir(args.credential)
    client_id = folder.credential.client_id
    if client_id.isdigit():
        if args.client_id is not None and args.client_id != int(client_id):
            parser.error(
                f"--client-id {args.client_id} disagrees with the --credential's id {client_id!r}"
            )
        args.client_id = int(client_id)
    elif args.client_id is None:
        args.client_id = 0
    server = args.server or folder.server
    if server is None:
        parser.error("--server is required: the --credential names no server")

    def refresh() -> dict[str, str]:
        # A Secret mounted as a volume is updated in place: a rotated token is read again.
        return {"Authorization": read_credential_dir(args.credential).authorization}

    headers = {"Authorization": folder.credential.authorization}
    return _Identity(client_id, server, headers, refresh, folder.ca_file)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from fl_kubeflow.client.federated_client import FederatedClient, FederationFailed
    from fl_kubeflow.client.secure_aggregation import SecAggViolation
    from fl_kubeflow.client.signature import ModelMismatch
    from fl_kubeflow.client.slowdown import slow_down
    from fl_kubeflow.client.transport import ServerError, ServerUnreachable

    try:
        who = _identity(args, parser)
    except ValueError as exc:
        print(f"fl-kubeflow client: error: {exc}", file=sys.stderr)
        return 2
    if args.client_id >= args.num_clients and args.trainer not in NUMPY_TRAINERS:
        parser.error(f"--client-id {args.client_id} must be below --num-clients {args.num_clients}")
    ca_file = args.ca_file or who.ca_file
    try:
        trainer = slow_down(build_trainer(args), args.slowdown)
        client = FederatedClient(
            who.server,
            who.client_id,
            trainer,
            retry_timeout=args.retry_timeout,
            round_wait_timeout=args.round_wait_timeout,
            headers=who.headers,
            verify=str(ca_file) if ca_file else True,
            refresh_headers=who.refresh,
            wire_dtype=args.wire_dtype,
            # numpy-delta adds its delta to whatever model it is sent: tests run it against
            # servers started from other models (a Keras mlp), so its own shapes mean nothing.
            check_model=args.trainer != "numpy-delta",
        )
    except ValueError as exc:
        print(f"fl-kubeflow client {who.client_id}: error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = client.run()
    except ModelMismatch as exc:
        print(f"fl-kubeflow client {who.client_id}: error: {exc}", file=sys.stderr)
        return 2
    except (FederationFailed, ServerError, ServerUnreachable, TimeoutError) as exc:
        print(f"fl-kubeflow client {who.client_id}: {exc}", file=sys.stderr)
        return 1
    except SecAggViolation as exc:
        print(f"fl-kubeflow client {who.client_id}: refused: {exc}", file=sys.stderr)
        return 1
    if args.summary is not None:
        files.write_json(args.summary, summary.to_dict())
    print(json.dumps(summary.to_dict()), flush=True)
    return 0
