"""``fl-kubeflow``: the command line. One module per subcommand, each adding its parser."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from fl_kubeflow import __version__
from fl_kubeflow.cli import client_cmd, credentials_cmd, server_cmd
from fl_kubeflow.cli.options import HelpFormatter

SUBCOMMANDS = [server_cmd, client_cmd, credentials_cmd]


def _optional_subcommands() -> list:
    """Subcommands whose modules may import heavier optional packages lazily."""
    from fl_kubeflow.cli import local_cmd, simulate_cmd, submit_cmd

    return [local_cmd, simulate_cmd, submit_cmd]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fl-kubeflow",
        description="Federated learning on Kubeflow Pipelines: server, clients, local runs.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="how much to log",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in [*SUBCOMMANDS, *_optional_subcommands()]:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        return int(args.run(args, parser) or 0)
    except KeyboardInterrupt:
        print("fl-kubeflow: interrupted", file=sys.stderr)
        return 130
