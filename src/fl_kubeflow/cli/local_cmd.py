"""``fl-kubeflow local``: a whole federation on this machine, no cluster needed."""

from __future__ import annotations

import argparse
from pathlib import Path

from fl_kubeflow import defaults
from fl_kubeflow.cli import async_options
from fl_kubeflow.cli.client_cmd import NUMPY_TRAINERS, add_training_options
from fl_kubeflow.cli.options import (
    HelpFormatter,
    float_at_least_one,
    non_negative_int,
    positive_float,
    positive_int,
)
from fl_kubeflow.cli.run_outcome import emit, emit_rounds, run_to_end
from fl_kubeflow.cli.secagg_options import params_from_args, server_args
from fl_kubeflow.cli.server_cmd import (
    add_server_options,
    config_from_args,
    limit_args,
    strategy_from_args,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "local",
        help="run a whole federation on this machine",
        description=(
            "Start the aggregation server and N client processes on loopback, show progress, "
            "and write weights.safetensors, history.json, report.html and (with the keras "
            "trainer) model.keras."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--clients", type=positive_int, default=defaults.NUM_CLIENTS, help="client processes (N)"
    )
    add_server_options(parser)
    add_training_options(parser)
    parser.add_argument(
        "--trainer",
        default=defaults.TRAINER,
        metavar="TRAINER",
        help="what each client trains: keras or torch (built-in models and datasets), "
        "MODULE:FACTORY (your factory(options) -> Trainer, importable here, e.g. on "
        "PYTHONPATH: docs/trainers.md), or numpy-linear (a TensorFlow-free demo)",
    )
    parser.add_argument(
        "--output", type=Path, default=Path("runs/local"), help="folder for the run's outputs"
    )
    parser.add_argument(
        "--slow-clients",
        type=slow_clients,
        default="",  # a string default goes through the type: {}, no straggler
        metavar="ID=FACTOR[,ID=FACTOR]",
        help="for benchmarks and tests only: stragglers, e.g. 0=5 makes client 0's fits "
        "take 5 times as long (its --slowdown)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=defaults.LOCAL_RUN_TIMEOUT,
        help="seconds the whole run may take before everything is stopped",
    )
    parser.set_defaults(rounds=defaults.NUM_ROUNDS, run=run)


def slow_clients(text: str) -> dict[int, float]:
    """'0=5,3=2' -> {0: 5.0, 3: 2.0}: client index -> slow-down factor (>= 1)."""
    factors: dict[int, float] = {}
    for pair in (p.strip() for p in text.split(",")):
        if not pair:
            continue
        name, sep, value = pair.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{pair!r} is not ID=FACTOR")
        client = non_negative_int(name.strip())
        if client in factors:
            raise argparse.ArgumentTypeError(f"client {client} is given twice")
        factors[client] = float_at_least_one(value.strip())
    return factors


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from fl_kubeflow.local.runner import LocalRun, LocalRunError, LocalRunOptions

    if args.min_clients is not None and args.min_clients > args.clients:
        parser.error(f"--min-clients {args.min_clients} exceeds --clients {args.clients}")
    beyond = sorted(c for c in args.slow_clients if c >= args.clients)
    if beyond:
        parser.error(f"--slow-clients: no client {beyond[0]} among --clients {args.clients}")
    try:
        secure_aggregation = params_from_args(args)
        asynchronous = async_options.params_from_args(args)
        strategy_options, _ = strategy_from_args(
            args, args.clients, secure_aggregation, asynchronous
        )
        # What the server process will refuse, refused before anything starts (e.g.
        # secure aggregation with --mode async).
        config_from_args(args, args.clients, strategy_options, secure_aggregation, asynchronous)
    except ValueError as exc:
        parser.error(str(exc))
    from fl_kubeflow.local.preflight import check_trainer_options

    try:
        if args.trainer not in NUMPY_TRAINERS:  # the demos read none of the training options
            check_trainer_options(
                args.trainer,
                args.dataset,
                args.partition,
                args.model,
                args.clients,
                args.data_locations,
            )
    except ValueError as exc:
        parser.error(str(exc))
    options = LocalRunOptions(
        clients=args.clients,
        rounds=args.rounds,
        min_clients=args.min_clients,
        dataset=args.dataset,
        partition=args.partition,
        model=args.model,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        optimizer=args.optimizer,
        seed=args.seed,
        data_locations=args.data_locations,
        label_column=args.label_column,
        feature_columns=args.feature_columns,
        data_timeout=args.data_timeout,
        strategy=args.strategy,
        strategy_options=strategy_options,
        secure_aggregation=secure_aggregation,
        asynchronous=asynchronous,
        slow_clients=args.slow_clients,
        trainer=args.trainer,
        output=args.output,
        join_timeout=args.join_timeout,
        round_timeout=args.round_timeout,
        timeout=args.timeout,
        extra_server_args=[
            *limit_args(args),
            *[arg for pair in args.strategy_option for arg in ("--strategy-option", pair)],
            *server_args(secure_aggregation),
            *async_options.server_args(asynchronous),
        ],
    )

    result, code = run_to_end("local", lambda: LocalRun(options, emit).run(), LocalRunError)
    if result is None:
        return code
    emit_rounds(result.history)
    for name, path in result.files.items():
        emit(f"{name:>8}: {path}")
    return 0
