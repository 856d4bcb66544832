"""Argument types shared by subcommands, each naming the bad value in its error; the help
formatter every subcommand uses."""

from __future__ import annotations

import argparse
from collections.abc import Callable


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help where X is a value the option takes.

    Not for a None or empty default (the option's help says in words what leaving it
    out does: "None" or "[]" of a repeatable option is nothing one could pass), nor where
    the help already names its default.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, "", [], ()) or "(default" in text:
            return action.help
        return super()._get_help_string(action)


def _int_at_least(text: str, minimum: int, rule: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} {rule}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "must be at least 1")


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "must not be negative")


def _float_where(text: str, ok: Callable[[float], bool], rule: str) -> float:
    """``text`` as a float if ``ok(value)`` holds, else an error saying ``rule``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{text!r} {rule}")
    return value


def positive_float(text: str) -> float:
    return _float_where(text, lambda v: v > 0, "must be positive")


def non_negative_float(text: str) -> float:
    return _float_where(text, lambda v: v >= 0, "must not be negative")


def float_at_least_one(text: str) -> float:
    return _float_where(text, lambda v: v >= 1, "must be at least 1")


def shapes(text: str) -> list[tuple[int, ...]]:
    """'16x8,8' -> [(16, 8), (8,)]."""
    try:
        result = [tuple(int(d) for d in part.split("x")) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of shapes like '16x8,8'"
        ) from None
    if not result or any(not s or min(s) < 1 for s in result):
        raise argparse.ArgumentTypeError(f"{text!r}: every dimension must be at least 1")
    return result


def json_list(text: str) -> tuple[str, ...]:
    """'["s3://b/c0.csv", "s3://b/c1.csv"]' -> a tuple of strings; '' or '[]' -> ()."""
    from fl_kubeflow.training.datasets import parse_data_locations

    try:
        return parse_data_locations(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
