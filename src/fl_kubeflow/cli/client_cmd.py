"""``fl-kubeflow client``: take part in a run as one client."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fl_kubeflow import defaults, files
from fl_kubeflow.auth import auth_headers, read_token
from fl_kubeflow.cli.options import (
    HelpFormatter,
    json_list,
    non_negative_int,
    positive_float,
    positive_int,
    shapes,
)

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
    parser.add_argument("--server", required=True, help="server URL, e.g. http://127.0.0.1:8080")
    parser.add_argument(
        "--client-id",
        type=non_negative_int,
        default=0,
        help="this client's index, 0..N-1 (also picks its data shard)",
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
        help="file holding the run's bearer token (or set FL_KUBEFLOW_TOKEN)",
    )
    parser.add_argument(
        "--wire-dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="send float32 tensors as this (default: as the server sends the model)",
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


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from fl_kubeflow.client.federated_client import FederatedClient, FederationFailed
    from fl_kubeflow.client.signature import ModelMismatch
    from fl_kubeflow.client.transport import ServerError, ServerUnreachable

    if args.client_id >= args.num_clients and args.trainer not in NUMPY_TRAINERS:
        parser.error(f"--client-id {args.client_id} must be below --num-clients {args.num_clients}")
    try:
        token = read_token(args.token_file)
        trainer = build_trainer(args)
        client = FederatedClient(
            args.server,
            str(args.client_id),
            trainer,
            retry_timeout=args.retry_timeout,
            round_wait_timeout=args.round_wait_timeout,
            headers=auth_headers(token),
            verify=str(args.ca_file) if args.ca_file else True,
            # A restarted server may have a new token: the file is read again on a 401.
            refresh_headers=(lambda: auth_headers(read_token(args.token_file)))
            if args.token_file
            else None,
            wire_dtype=args.wire_dtype,
            # numpy-delta adds its delta to whatever model it is sent: tests run it against
            # servers started from other models (a Keras mlp), so its own shapes mean nothing.
            check_model=args.trainer != "numpy-delta",
        )
    except ValueError as exc:
        print(f"fl-kubeflow client {args.client_id}: error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = client.run()
    except ModelMismatch as exc:
        print(f"fl-kubeflow client {args.client_id}: error: {exc}", file=sys.stderr)
        return 2
    except (FederationFailed, ServerError, ServerUnreachable, TimeoutError) as exc:
        print(f"fl-kubeflow client {args.client_id}: {exc}", file=sys.stderr)
        return 1
    if args.summary is not None:
        files.write_json(args.summary, summary.to_dict())
    print(json.dumps(summary.to_dict()), flush=True)
    return 0
