"""``--mode`` and its ``--async-*`` options: shared by ``server`` and ``local``.

One option per name of ``async_params.OPTION_NAMES`` (``--async-buffer-size`` is
``buffer_size``); the defaults and checks are ``AsyncParams``'. ``params_from_args``
turns them into the run's ``AsyncParams`` (None for synchronous rounds) and
``server_args`` back into a command line (the local runner hands them to its server).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from fl_kubeflow import async_params
from fl_kubeflow.async_params import ASYNC, MODES, SYNC, AsyncParams
from fl_kubeflow.cli.options import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)

SWITCH = "--mode"


# Per option name: (type, metavar, help). Names and defaults are async_params'.
OPTIONS: dict[str, tuple[Callable[[str], Any], str, str]] = {
    "buffer_size": (
        positive_int,
        "K",
        "updates buffered before the server makes a new model version (default: every client, N)",
    ),
    "max_concurrency": (
        positive_int,
        "M",
        "clients training at once; the others wait for a slot (default: N, or "
        "ceil(fraction_fit * N) with sampling)",
    ),
    "staleness_exponent": (
        non_negative_float,
        "A",
        "a in the staleness weight (1 + tau) ** -a of an update tau versions old; 0 "
        f"weighs every update alike (default: {async_params.STALENESS_EXPONENT})",
    ),
    "max_staleness": (
        non_negative_int,
        "S",
        "updates more than S versions behind are refused (HTTP 409) "
        f"(default: {async_params.MAX_STALENESS})",
    ),
    "server_learning_rate": (
        positive_float,
        "ETA",
        "the new version is the current one plus ETA times the buffer's "
        f"staleness-weighted mean change (default: {async_params.SERVER_LEARNING_RATE})",
    ),
}


def flag(name: str) -> str:
    """The command-line option of an AsyncParams option name."""
    return "--async-" + name.replace("_", "-")


def add_async_options(parser: argparse.ArgumentParser) -> None:
    """The mode and its options, as one group of ``parser``'s help."""
    group = parser.add_argument_group(
        "asynchronous rounds (FedBuff, docs/asynchronous.md)",
        "With --mode async clients train whenever they are ready and every K updates "
        "make a new model version (--rounds counts versions). Averaging strategies only; "
        "not with secure aggregation.",
    )
    group.add_argument(
        SWITCH,
        choices=MODES,
        default=SYNC,
        help="sync: rounds wait for their clients; async: buffered asynchronous versions",
    )
    for name, (kind, metavar, text) in OPTIONS.items():
        # None: not given, so AsyncParams' default applies and sync mode can refuse it.
        group.add_argument(
            flag(name), type=kind, default=None, dest=f"async_{name}", metavar=metavar, help=text
        )


def params_from_args(args: argparse.Namespace) -> AsyncParams | None:
    """The run's AsyncParams; None for synchronous rounds.

    Raises:
        ValueError: an ``--async-*`` option given without ``--mode async`` (it would do
            nothing), or a value AsyncParams refuses (naming the option).
    """
    given = {
        name: getattr(args, f"async_{name}")
        for name in OPTIONS
        if getattr(args, f"async_{name}") is not None
    }
    if args.mode != ASYNC:
        if given:
            raise ValueError(f"{', '.join(flag(n) for n in given)} needs {SWITCH} {ASYNC}")
        return None
    return AsyncParams.from_options(given)


def server_args(params: AsyncParams | None) -> list[str]:
    """The server command line that gives ``params`` (nothing for None)."""
    if params is None:
        return []
    args = [SWITCH, ASYNC]
    for name, value in params.to_options().items():
        args += [flag(name), str(value)]
    return args
