"""``fl-kubeflow simulate``: many virtual clients in a few worker processes, one real server."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from fl_kubeflow import defaults
from fl_kubeflow.cli.client_cmd import add_training_options
from fl_kubeflow.cli.options import HelpFormatter, positive_float, positive_int
from fl_kubeflow.cli.run_outcome import emit, emit_rounds, run_to_end
from fl_kubeflow.cli.server_cmd import add_server_options, limit_args


def _fraction(text: str) -> float:
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}")
    return value


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def add_parser(sub: argparse._SubParsersAction) -> None:
    from fl_kubeflow.simulation.options import DEFAULT_PARAMS, TRAINERS

    parser = sub.add_parser(
        "simulate",
        help="run many virtual clients in a few processes against a real server",
        description=(
            "Start the aggregation server on loopback and a few worker processes, each "
            "hosting many virtual clients on one model (each with its own id, speaking the "
            "real protocol), sample --fraction-fit of them each round, and write "
            "history.json, weights.safetensors, report.html and simulation.json (timings, "
            "peak memory). docs/simulation.md has the design and its limits."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--clients", type=positive_int, default=100, help="virtual clients (N)")
    parser.add_argument(
        "--fraction-fit",
        type=_fraction,
        default=0.1,
        help="share of the clients sampled to train each round (C)",
    )
    parser.add_argument(
        "--fraction-evaluate",
        type=_fraction,
        default=None,
        help="share sampled to evaluate each round's model (default: the strategy's, 1.0)",
    )
    parser.add_argument(
        "--workers", type=positive_int, default=1, help="worker processes hosting the clients"
    )
    parser.add_argument(
        "--trainer",
        default="numpy",
        choices=TRAINERS,
        help="numpy (a --params model, no framework), keras or torch (built-in models on "
        "a built-in dataset)",
    )
    parser.add_argument(
        "--params",
        type=positive_int,
        default=DEFAULT_PARAMS,
        help="parameters of the numpy trainer's model",
    )
    add_server_options(parser)
    add_training_options(parser)
    parser.add_argument(
        "--output", type=Path, default=Path("runs/simulate"), help="folder for the outputs"
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=defaults.LOCAL_RUN_TIMEOUT,
        help="seconds the whole simulation may take before everything is stopped",
    )
    parser.set_defaults(rounds=defaults.NUM_ROUNDS, min_clients=1, run=run)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from fl_kubeflow import strategies
    from fl_kubeflow.simulation.options import NUMPY, SimulationOptions
    from fl_kubeflow.simulation.runner import Simulation, SimulationError
    from fl_kubeflow.training.datasets import file_dataset

    if args.secure_aggregation:
        parser.error("--secure-aggregation is not simulated (docs/simulation.md)")
    if args.data_locations or file_dataset(args.dataset) is not None:
        parser.error("simulate takes a built-in --dataset (digits, mnist, ...), not files")
    options = SimulationOptions(
        clients=args.clients,
        rounds=args.rounds,
        fraction_fit=args.fraction_fit,
        fraction_evaluate=args.fraction_evaluate,
        min_clients=args.min_clients,
        trainer=args.trainer,
        params=args.params,
        dataset=args.dataset,
        partition=args.partition,
        model=args.model,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        optimizer=args.optimizer,
        seed=args.seed,
        workers=args.workers,
        strategy=args.strategy,
        output=args.output,
        join_timeout=args.join_timeout,
        round_timeout=args.round_timeout,
        timeout=args.timeout,
    )
    try:
        options.strategy_options = strategies.parse_option_pairs(args.strategy_option)
        options.validate()
        strategies.build(
            args.strategy,
            options.server_strategy_options(),
            num_clients=args.clients,
            min_clients=args.min_clients,
        )
        if args.trainer != NUMPY:
            from fl_kubeflow.local.preflight import check_trainer_options

            check_trainer_options(
                args.trainer, args.dataset, args.partition, args.model, args.clients, ()
            )
    except ValueError as exc:
        parser.error(str(exc))

    # A SIGTERM (a benchmark's timeout, a supervisor) stops the server and the workers
    # too, as Ctrl-C does: they run in their own sessions and would outlive this process.
    signal.signal(signal.SIGTERM, _interrupt)
    result, code = run_to_end(
        "simulate", lambda: Simulation(options, emit, limit_args(args)).run(), SimulationError
    )
    if result is None:
        return code
    emit_rounds(result.history)
    summary = result.summary
    emit(
        f"wall {summary['wall_s']:.2f}s, median round {summary['median_round_s']:.3f}s, "
        f"peak memory (server + workers) {summary['peak_rss_bytes']['sum'] / 2**20:.0f} MiB"
    )
    for name, path in result.files.items():
        emit(f"{name:>10}: {path}")
    return 0
