"""Every option's --help, in every parser the package has: the defaults it shows are real.

A shown default must be something the option itself accepts (parsed by the option's own
type and, if it has choices, one of them), and no help may name its default twice (once
in words and once more by the formatter). The parsers are walked, not listed: a new
subcommand or option is checked without touching this file.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from fl_kubeflow.cli import adversarial_cmd, build_parser

# What argparse's ArgumentDefaultsHelpFormatter appends to a help: the shown default.
SHOWN_DEFAULT = re.compile(r"\(default: (?P<value>.*)\)$")


def parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """The top-level parser, each of its subcommands (and theirs), and the standalone ones."""
    todo = [("fl-kubeflow", build_parser()), ("adversarial_cmd", adversarial_cmd.build_parser())]
    while todo:
        name, parser = todo.pop()
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend((f"{name} {sub}", p) for sub, p in action.choices.items())


def options() -> list:
    """One pytest.param(parser, action) per option with a help, named by command and option."""
    return [
        pytest.param(parser, action, id=f"{name} {action.option_strings[0]}")
        for name, parser in parsers()
        for action in parser._actions
        if action.option_strings and action.help not in (None, argparse.SUPPRESS)
    ]


def shown_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The option's help as ``--help`` prints it (before line wrapping)."""
    return parser._get_formatter()._expand_help(action)


def test_the_walk_finds_every_subcommand() -> None:
    names = {name for name, _ in parsers()}
    assert {f"fl-kubeflow {c}" for c in ("server", "client", "local", "submit")} <= names
    assert "adversarial_cmd" in names


@pytest.mark.parametrize(("parser", "action"), options())
def test_a_shown_default_is_one_the_option_accepts(
    parser: argparse.ArgumentParser, action: argparse.Action
) -> None:
    where = f"{parser.prog} {action.option_strings[0]}"
    text = " ".join(shown_help(parser, action).split())
    assert text.count("(default") <= 1, f"{where}: {text!r}"
    shown = SHOWN_DEFAULT.search(text)
    if shown is None or shown.group("value") != str(action.default):
        return  # no default shown, or one in words ("(default: all clients)")
    value = shown.group("value")
    assert value != "None", f"{where} shows a None default: {text!r}"
    if action.type is not None:
        try:
            parsed = action.type(value)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            pytest.fail(f"{where} shows default {value!r}, which it refuses: {exc}")
        if not isinstance(action.default, str):
            assert parsed == action.default, where
    if action.choices is not None:
        assert (action.type or str)(value) in action.choices, where
