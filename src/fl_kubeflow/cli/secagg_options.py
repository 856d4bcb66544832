"""``--secure-aggregation`` and its ``--secagg-*`` options: shared by ``server`` and ``local``.

One option per name of ``secagg.params.OPTION_NAMES`` (``--secagg-max-weight`` is
``max_weight``), defaults from ``secagg.params``; ``params_from_args`` turns them
into the run's ``SecAggParams`` and ``server_args`` back into a command line (the
local runner hands them to its server process).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from fl_kubeflow.cli.options import positive_float, positive_int
from fl_kubeflow.secagg import params as secagg

SWITCH = "--secure-aggregation"


def fraction_below_one(text: str) -> float:
    """A number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 0 and below 1")
    return value


def bits(text: str) -> int:
    """32 or 64."""
    value = positive_int(text)
    if value not in secagg.BITS_CHOICES:
        choices = " or ".join(str(b) for b in secagg.BITS_CHOICES)
        raise argparse.ArgumentTypeError(f"{text!r} must be {choices}")
    return value


# Per option name: (type, default, help). Names and defaults are secagg.params'.
OPTIONS: dict[str, tuple[Callable[[str], Any], Any, str]] = {
    "bits": (
        bits,
        secagg.BITS,
        "integers modulo 2**BITS (32 or 64), the masked update's wire type: 64 for a "
        "finer quantisation step at twice the bytes",
    ),
    "range": (
        positive_float,
        secagg.RANGE,
        "largest change of one parameter in a round a client may send; larger changes "
        "are clipped to [-RANGE, RANGE]",
    ),
    "max_weight": (
        positive_int,
        secagg.MAX_WEIGHT,
        "largest total weight of a round (examples; clients under central DP); with "
        "--secagg-range and --secagg-bits it sets the quantisation step "
        "range / floor((2**(bits-1) - 1) / max_weight)",
    ),
    "dropout_fraction": (
        fraction_below_one,
        secagg.DROPOUT_FRACTION,
        "share of a round's clients that may drop out after sending keys: the threshold "
        "is chosen to survive it",
    ),
    "corrupt_fraction": (
        fraction_below_one,
        secagg.CORRUPT_FRACTION,
        "share of clients that may collude with the server: the threshold is chosen to resist it",
    ),
    "timeout": (
        positive_float,
        secagg.STAGE_TIMEOUT,
        "seconds each stage after the keys (shares, masked inputs, reveal) may take "
        "before it closes with the clients that answered",
    ),
}


def flag(name: str) -> str:
    """The command-line option of a SecAggParams option name."""
    return "--secagg-" + name.replace("_", "-")


def add_secure_aggregation_options(parser: argparse.ArgumentParser) -> None:
    """The switch and its options, as one group of ``parser``'s help."""
    group = parser.add_argument_group(
        "secure aggregation (SecAgg+, docs/secure_aggregation.md)",
        "The server learns only the sum of each round's updates and survives drop-outs. "
        "Needs an averaging strategy (central DP with clipping=client) and at least "
        f"{secagg.MIN_CLIENTS} clients.",
    )
    group.add_argument(
        SWITCH,
        action="store_true",
        help="mask every update so that the server sees only the round's sum",
    )
    for name, (kind, default, text) in OPTIONS.items():
        group.add_argument(
            flag(name),
            type=kind,
            default=default,
            dest=f"secagg_{name}",
            metavar=name.upper(),
            help=text,
        )


def params_from_args(args: argparse.Namespace) -> secagg.SecAggParams | None:
    """The run's SecAggParams; None without the switch.

    Raises:
        ValueError: a ``--secagg-*`` option changed without the switch (it would do
            nothing), or a value SecAggParams refuses (naming the option).
    """
    values = {name: getattr(args, f"secagg_{name}") for name in OPTIONS}
    if not args.secure_aggregation:
        changed = [flag(n) for n, v in values.items() if v != OPTIONS[n][1]]
        if changed:
            raise ValueError(f"{', '.join(changed)} needs {SWITCH}")
        return None
    return secagg.SecAggParams.from_options(values)


def server_args(params: secagg.SecAggParams | None) -> list[str]:
    """The server command line that gives ``params`` (nothing for None)."""
    if params is None:
        return []
    args = [SWITCH]
    for name in OPTIONS:
        args += [flag(name), str(getattr(params, name))]
    return args
