"""``--mode`` and ``--async-*`` on ``fl-kubeflow server`` and ``local``; ``--slowdown`` and
``--slow-clients`` (stragglers for benchmarks and tests).

Help and parsing through the real parser; the refusals through ``fl_kubeflow.cli.main``,
which stops before any server or client starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fl_kubeflow import async_params
from fl_kubeflow.async_params import AsyncParams
from fl_kubeflow.cli.async_options import OPTIONS, flag, params_from_args, server_args
from tests.test_secagg_cli import COMMANDS, parse, run_main


def test_one_option_per_async_option_name() -> None:
    assert tuple(OPTIONS) == async_params.OPTION_NAMES
    assert flag("buffer_size") == "--async-buffer-size"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_the_mode_and_every_option(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse(command, "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "--mode {sync,async}" in text and "docs/asynchronous.md" in text
    for name in async_params.OPTION_NAMES:
        assert f"{flag(name)} {OPTIONS[name][1]}" in text, name
    for value in (async_params.STALENESS_EXPONENT, async_params.MAX_STALENESS):
        assert f"(default: {value})" in text


@pytest.mark.parametrize("command", COMMANDS)
def test_sync_is_the_default_and_has_no_params(command: str) -> None:
    assert parse(command).mode == "sync"
    assert params_from_args(parse(command)) is None
    assert params_from_args(parse(command, "--mode", "sync")) is None


@pytest.mark.parametrize("command", COMMANDS)
def test_options_build_the_runs_params(command: str) -> None:
    args = parse(
        command,
        "--clients",
        "4",
        "--mode",
        "async",
        "--async-buffer-size",
        "3",
        "--async-max-concurrency",
        "4",
        "--async-staleness-exponent",
        "0",
        "--async-max-staleness",
        "2",
        "--async-server-learning-rate",
        "0.5",
    )
    expected = AsyncParams(
        buffer_size=3,
        max_concurrency=4,
        staleness_exponent=0.0,
        max_staleness=2,
        server_learning_rate=0.5,
    )
    assert params_from_args(args) == expected
    # What local hands its server process parses back to the same options.
    assert params_from_args(parse("server", *server_args(expected))) == expected
    assert server_args(None) == []
    assert params_from_args(parse(command, "--mode", "async")) == AsyncParams()
    assert server_args(AsyncParams())[:2] == ["--mode", "async"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mode", "later"], "invalid choice: 'later'"),
        (["--async-buffer-size", "0"], "'0' must be at least 1"),
        (["--async-max-concurrency", "many"], "'many' is not an integer"),
        (["--async-staleness-exponent", "-1"], "'-1' must not be negative"),
        (["--async-max-staleness", "-1"], "'-1' must not be negative"),
        (["--async-server-learning-rate", "0"], "'0' must be positive"),
    ],
)
def test_bad_values_are_refused_naming_the_option(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("server", *argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert argv[0] in err and message in err


def command_line(command: str, output: Path, *argv: str) -> list[str]:
    port = ["--port", "0"] if command == "server" else []
    return [command, *port, "--output", str(output), *argv]


@pytest.mark.parametrize("command", COMMANDS)
def test_an_option_without_mode_async_is_refused(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "run"
    argv = command_line(command, output, "--async-buffer-size", "2", "--async-max-staleness", "3")
    err = run_main(argv, capsys)
    assert "--async-buffer-size, --async-max-staleness needs --mode async" in err
    assert not output.exists()


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--strategy", "krum"], "krum"),
        (["--strategy", "fedmedian"], "fedmedian"),
        (["--clients", "3", "--async-buffer-size", "4"], "more than the 3 clients"),
        (["--clients", "3", "--secure-aggregation"], "needs synchronous rounds"),
    ],
)
def test_what_cannot_run_asynchronously_is_refused_before_anything_starts(
    command: str,
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output = tmp_path / "run"
    err = run_main(command_line(command, output, "--mode", "async", *argv), capsys)
    assert message in err
    assert not output.exists()


def test_client_slowdown_option() -> None:
    args = parse("client", "--server", "http://127.0.0.1:1", "--slowdown", "5")
    assert args.slowdown == 5.0
    assert parse("client", "--server", "http://127.0.0.1:1").slowdown == 1.0


def test_local_slow_clients_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse("local", "--slow-clients", "0=5,3=2.5").slow_clients == {0: 5.0, 3: 2.5}
    assert parse("local").slow_clients == {}
    for bad, message in (
        ("0=0.5", "'0.5' must be at least 1"),
        ("x=2", "'x' is not an integer"),
        ("1", "'1' is not ID=FACTOR"),
        ("1=2,1=3", "client 1 is given twice"),
    ):
        with pytest.raises(SystemExit):
            parse("local", "--slow-clients", bad)
        assert message in capsys.readouterr().err, bad


def test_slow_clients_must_be_among_the_clients(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "run"
    err = run_main(
        ["local", "--clients", "2", "--slow-clients", "2=5", "--output", str(output)], capsys
    )
    assert "--slow-clients: no client 2 among --clients 2" in err
    assert not output.exists()


@pytest.mark.parametrize("command", ["client", "local"])
def test_straggler_options_say_they_are_for_benchmarks_and_tests(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse(command, "--help")
    text = " ".join(capsys.readouterr().out.split())
    option = "--slowdown FACTOR" if command == "client" else "--slow-clients ID=FACTOR"
    assert option in text
    assert text.count("for benchmarks and tests only") >= 1
