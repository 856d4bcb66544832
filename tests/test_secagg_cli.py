"""``--secure-aggregation`` and ``--secagg-*`` on ``fl-kubeflow server`` and ``local``.

Help and parsing through the real parser (``tests/test_cli_help.py`` checks every shown
default generically); the refusals through ``fl_kubeflow.cli.main``, which stops before
any server or client starts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fl_kubeflow.cli import build_parser, main
from fl_kubeflow.cli.secagg_options import OPTIONS, flag, params_from_args, server_args
from fl_kubeflow.secagg import params as secagg
from fl_kubeflow.secagg.params import SecAggParams

COMMANDS = ["server", "local"]


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_one_option_per_secagg_option_name() -> None:
    assert tuple(OPTIONS) == secagg.OPTION_NAMES
    assert flag("max_weight") == "--secagg-max-weight"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_the_switch_and_every_option_with_its_default(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse(command, "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "--secure-aggregation" in text and "docs/secure_aggregation.md" in text
    defaults = SecAggParams()
    for name in secagg.OPTION_NAMES:
        assert f"{flag(name)} {name.upper()}" in text, name
        # The formatter appends the default after the help (the help may wrap, not this).
        assert f"(default: {getattr(defaults, name)})" in text, name


@pytest.mark.parametrize("command", COMMANDS)
def test_without_the_switch_there_is_no_secure_aggregation(command: str) -> None:
    assert params_from_args(parse(command)) is None


@pytest.mark.parametrize("command", COMMANDS)
def test_options_build_the_runs_params(command: str) -> None:
    args = parse(
        command,
        "--secure-aggregation",
        "--secagg-bits",
        "64",
        "--secagg-range",
        "0.5",
        "--secagg-max-weight",
        "5000",
        "--secagg-dropout-fraction",
        "0.3",
        "--secagg-corrupt-fraction",
        "0",
        "--secagg-timeout",
        "12.5",
    )
    expected = SecAggParams(
        bits=64,
        range=0.5,
        max_weight=5000,
        dropout_fraction=0.3,
        corrupt_fraction=0.0,
        timeout=12.5,
    )
    assert params_from_args(args) == expected
    # What local hands its server process parses back to the same options.
    assert params_from_args(parse("server", *server_args(expected))) == expected
    assert server_args(None) == []
    assert params_from_args(parse(command, "--secure-aggregation")) == SecAggParams()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--secagg-bits", "48"], "'48' must be 32 or 64"),
        (["--secagg-range", "0"], "'0' must be positive"),
        (["--secagg-max-weight", "0"], "'0' must be at least 1"),
        (["--secagg-dropout-fraction", "1"], "'1' must be at least 0 and below 1"),
        (["--secagg-corrupt-fraction", "-0.1"], "'-0.1' must be at least 0 and below 1"),
        (["--secagg-timeout", "soon"], "'soon' is not a number"),
    ],
)
def test_bad_values_are_refused_naming_the_option(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("server", "--secure-aggregation", *argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert argv[0] in err and message in err


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """``fl-kubeflow ARGV`` in this process; it must refuse (exit 2): its stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
def test_an_option_without_the_switch_is_refused(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = run_main([command, "--secagg-bits", "64", "--output", str(tmp_path / "run")], capsys)
    assert "--secagg-bits needs --secure-aggregation" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--strategy", "fedmedian"], "strategy 'fedmedian' needs every client's update"),
        (
            ["--strategy-option", "noise_multiplier=1", "--strategy-option", "clipping_norm=1"],
            "use clipping=client",
        ),
        (["--clients", "4", "--min-clients", "2"], "min_clients=2 under secure aggregation"),
    ],
)
def test_what_cannot_work_on_a_masked_sum_is_refused_before_anything_starts(
    command: str,
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output = tmp_path / "run"
    err = run_main(
        [command, "--secure-aggregation", "--port", "0", "--output", str(output), *argv]
        if command == "server"
        else [command, "--secure-aggregation", "--output", str(output), *argv],
        capsys,
    )
    assert message in err
    assert not output.exists()
