"""``fl-kubeflow server``: run the aggregation server for one federated run."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fl_kubeflow import defaults, files
from fl_kubeflow.auth import TOKEN_ENV, read_token
from fl_kubeflow.cli import async_options
from fl_kubeflow.cli.options import (
    HelpFormatter,
    non_negative_int,
    positive_float,
    positive_int,
)
from fl_kubeflow.cli.secagg_options import add_secure_aggregation_options, params_from_args

if TYPE_CHECKING:
    from fl_kubeflow.async_params import AsyncParams
    from fl_kubeflow.secagg.params import SecAggParams
    from fl_kubeflow.server.config import ServerConfig
    from fl_kubeflow.strategies import Strategy


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """The run's shape and timeouts: shared with ``local``."""
    parser.add_argument("--rounds", type=positive_int, default=3, help="training rounds (R)")
    parser.add_argument(
        "--min-clients",
        type=positive_int,
        default=None,
        help="quorum: fewest clients a round may close with (default: all clients)",
    )
    parser.add_argument(
        "--join-timeout",
        type=positive_float,
        default=defaults.JOIN_TIMEOUT,
        help="seconds to wait for the clients to join",
    )
    parser.add_argument(
        "--round-timeout",
        type=positive_float,
        default=defaults.ROUND_TIMEOUT,
        help="seconds a round waits for updates before closing with those that came",
    )
    parser.add_argument(
        "--strategy",
        default=defaults.STRATEGY,
        help="aggregation strategy: fedavg, fedavgm, fedprox, fedadam, fedyogi, fedadagrad, "
        "fedmedian, fedtrimmedavg, krum, multikrum (docs/strategies.md)",
    )
    parser.add_argument(
        "--strategy-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one strategy option, repeatable, e.g. eta=0.03, fraction_fit=0.5, "
        "noise_multiplier=1.0 clipping_norm=0.5 (central DP)",
    )
    parser.add_argument(
        "--max-update-mb",
        type=positive_float,
        default=defaults.MAX_UPDATE_MB,
        help="largest update body accepted, in MiB (larger: HTTP 413)",
    )
    parser.add_argument(
        "--max-examples",
        type=positive_int,
        default=defaults.MAX_EXAMPLES,
        help="most examples one update or evaluation may claim (FedAvg's weight; more: "
        "HTTP 400); a client enrolled with a lower max_examples gets its own",
    )
    parser.add_argument(
        "--grace-period",
        type=positive_float,
        default=defaults.GRACE_PERIOD,
        help="seconds to wait after the last round for every client to hear 'finished'",
    )
    parser.add_argument(
        "--poll-timeout",
        type=positive_float,
        default=defaults.POLL_TIMEOUT,
        help="longest the server holds a model long-poll before answering 'not yet'",
    )
    add_secure_aggregation_options(parser)
    async_options.add_async_options(parser)


def limit_args(args: argparse.Namespace) -> list[str]:
    """The server's limits among ``add_server_options``, as ``fl-kubeflow server``
    options: what ``local`` and ``simulate`` pass on to the server they start."""
    return [
        "--grace-period",
        str(args.grace_period),
        "--poll-timeout",
        str(args.poll_timeout),
        "--max-update-mb",
        str(args.max_update_mb),
        "--max-examples",
        str(args.max_examples),
    ]


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "server",
        help="run the aggregation server",
        description="Run the aggregation server until the run finishes or fails.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--clients", type=positive_int, default=2, help="clients expected (N)")
    add_server_options(parser)
    parser.add_argument("--host", default="0.0.0.0", help="interface to bind")
    parser.add_argument("--port", type=non_negative_int, default=8080, help="port (0: any free)")
    parser.add_argument(
        "--client-ids",
        default=None,
        help="comma-separated ids allowed to join (default: any, up to --clients)",
    )
    parser.add_argument(
        "--initial-weights",
        type=Path,
        default=None,
        help="safetensors file with the starting model (default: the first client's)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="folder for weights.safetensors and history.json",
    )
    parser.add_argument(
        "--credentials",
        type=Path,
        default=None,
        metavar="REGISTRY.json",
        help="credential registry (fl-kubeflow credentials issue): one token per client, "
        "each acting only as itself; read again when it changes, so a client revoked there "
        "is refused and dropped from the run",
    )
    parser.add_argument(
        "--credentials-reload",
        type=positive_float,
        default=defaults.CREDENTIALS_RELOAD,
        help="seconds between checks of --credentials for changes",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="legacy: file holding one bearer token all clients share, any of them able to "
        "act as any other (or set FL_KUBEFLOW_TOKEN; ignored with --credentials); without "
        "it or --credentials, any client that reaches the server may join",
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        help="PEM certificate to serve HTTPS with (needs --tls-key); default plain HTTP",
    )
    parser.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="save the run after every round here, and resume from it after a restart",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help="write {'port': P} here once listening (for scripts using --port 0)",
    )
    parser.add_argument(
        "--wire-dtype",
        default="float32",
        choices=["float32", "float16", "bfloat16"],
        help="send float32 tensors as this (float16/bfloat16: half the bytes); the model "
        "and the aggregation stay float32; clients follow unless told otherwise",
    )
    parser.add_argument(
        "--io-threads",
        type=positive_int,
        default=None,
        help="socket I/O threads receiving and sending bodies (default: one per usable CPU, "
        "at most 4); plain HTTP only: with TLS, cheroot's worker threads do this",
    )
    parser.add_argument(
        "--receive-slots",
        type=non_negative_int,
        default=defaults.RECEIVE_SLOTS,
        help="updates received straight into memory at once, each costing an update's "
        "size; other uploads wait their turn; 0 spools every update to a temporary "
        "file, slower but with no update in memory until it is read (default: 2; plain "
        "HTTP only)",
    )
    parser.add_argument(
        "--slot-patience",
        type=positive_float,
        default=defaults.SLOT_PATIENCE,
        help="seconds an upload waits for a receive slot while none frees before it is "
        "received into a temporary file instead (default: 2)",
    )
    parser.add_argument(
        "--head-timeout",
        type=positive_float,
        default=defaults.HEAD_TIMEOUT,
        help="seconds a request's line and headers may take from its first byte; a "
        "connection not yet shown to be a client's must send each within this of its "
        "accept (TLS handshake included) or of its last answer",
    )
    parser.add_argument(
        "--idle-timeout",
        type=positive_float,
        default=defaults.IDLE_TIMEOUT,
        help="seconds a client's connection may stay idle between requests (a long-poll "
        "is a request, not idle)",
    )
    parser.add_argument(
        "--max-pending-connections",
        type=positive_int,
        default=defaults.MAX_PENDING_CONNECTIONS,
        help="connections not yet shown to be a client's (by an authenticated /v1 "
        "request) held at once; beyond, the oldest idle one is closed",
    )
    parser.set_defaults(run=run)


def config_from_args(
    args: argparse.Namespace,
    num_clients: int,
    strategy_options: dict[str, Any],
    secure_aggregation: SecAggParams | None = None,
    asynchronous: AsyncParams | None = None,
    **overrides: Any,
) -> ServerConfig:
    """Build a ServerConfig from parsed options (ValueError names the bad value).

    ``secure_aggregation`` is ``secagg_options.params_from_args(args)`` and
    ``asynchronous`` ``async_options.params_from_args(args)``, made once by the caller,
    which checked the strategy against them.
    """
    from fl_kubeflow.server.config import ServerConfig

    values = dict(
        num_clients=num_clients,
        num_rounds=args.rounds,
        min_clients=args.min_clients,
        join_timeout=args.join_timeout,
        round_timeout=args.round_timeout,
        max_update_bytes=int(args.max_update_mb * 1024 * 1024),
        max_examples=args.max_examples,
        grace_period=args.grace_period,
        poll_timeout=args.poll_timeout,
        strategy=args.strategy,
        strategy_options=strategy_options,
        secure_aggregation=secure_aggregation,
        asynchronous=asynchronous,
    )
    values.update(overrides)
    return ServerConfig(**values)


def strategy_from_args(
    args: argparse.Namespace,
    num_clients: int,
    secure_aggregation: SecAggParams | None = None,
    asynchronous: AsyncParams | None = None,
) -> tuple[dict[str, Any], Strategy]:
    """The --strategy-option pairs, and the strategy built from them for this federation
    (with ``secure_aggregation``: checked to work on a masked sum, for this many clients;
    with ``asynchronous``: checked to average a buffer of updates of mixed versions).

    Raises ValueError naming the strategy, option or value at fault, before anything starts.
    """
    from fl_kubeflow import strategies

    options = strategies.parse_option_pairs(args.strategy_option)
    strategy = strategies.build(
        args.strategy,
        options,
        num_clients=num_clients,
        min_clients=args.min_clients,
        secure_aggregation=secure_aggregation,
        asynchronous=asynchronous,
    )
    return options, strategy


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from fl_kubeflow.server.serve import serve

    # An unknown --strategy is refused by strategy_from_args, with the known names.
    client_ids = None
    if args.client_ids:
        client_ids = tuple(c.strip() for c in args.client_ids.split(",") if c.strip())
    if args.initial_weights is not None and not args.initial_weights.is_file():
        parser.error(f"--initial-weights {str(args.initial_weights)!r} is not a file")
    try:
        # The registry replaces the shared token: one in the environment is not used.
        token = None if args.credentials else read_token(args.token_file)
        if args.credentials and args.token_file:
            parser.error("--credentials and --token-file: give one")
        secure_aggregation = params_from_args(args)
        asynchronous = async_options.params_from_args(args)
        strategy_options, strategy = strategy_from_args(
            args, args.clients, secure_aggregation, asynchronous
        )
        config = config_from_args(
            args,
            args.clients,
            strategy_options,
            secure_aggregation,
            asynchronous,
            host=args.host,
            port=args.port,
            client_ids=client_ids,
            initial_weights=args.initial_weights,
            output_dir=args.output,
            token=token,
            credentials=args.credentials,
            credentials_reload=args.credentials_reload,
            checkpoint_dir=args.checkpoint_dir,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            wire_dtype=args.wire_dtype,
            io_threads=args.io_threads,
            receive_slots=args.receive_slots,
            slot_patience=args.slot_patience,
            head_timeout=args.head_timeout,
            idle_timeout=args.idle_timeout,
            max_pending_connections=args.max_pending_connections,
        )
    except ValueError as exc:
        parser.error(str(exc))
    if token is None and args.credentials is None:
        logging.getLogger("fl_kubeflow.server").warning(
            "no token or credentials (--credentials, --token-file or %s): any client that "
            "reaches the server may join",
            TOKEN_ENV,
        )

    def announce(port: int) -> None:
        if args.ready_file is not None:
            files.write_json(args.ready_file, {"port": port})

    try:
        result = serve(config, on_listening=announce, strategy=strategy)
    except ValueError as exc:
        parser.error(str(exc))
    if not result.ok:
        print(f"fl-kubeflow server: run failed: {result.error}", flush=True)
        return 1
    last = result.history["rounds"][-1]
    print(
        json.dumps(
            {"status": "finished", "rounds": last["round"], "evaluate": last.get("evaluate")}
        ),
        flush=True,
    )
    return 0
