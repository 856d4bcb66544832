"""The pipeline's mode and async_options reach the server task, checked first.

Parsed by ``asynchronous_params``; a strategy or option that cannot work is refused
before the Service or the server exists, by the task and through KFP's own executor
running the fl-server component (``tests.kfp_executor``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fl_kubeflow_kfp.components import build_components

from fl_kubeflow.async_params import AsyncParams
from fl_kubeflow.tasks.server_task import ServerTaskError, asynchronous_params, run_server_task
from tests.kfp_executor import run_executor
from tests.test_secagg_server_task import EXECUTOR_TIMEOUT, RUN_ID


def test_options_parse_from_pairs_or_a_mapping() -> None:
    assert asynchronous_params("sync") is None
    assert asynchronous_params("sync", "") is None
    assert asynchronous_params("async") == AsyncParams()
    assert asynchronous_params("async", " buffer_size=3, max_staleness=2 ,") == AsyncParams(
        buffer_size=3, max_staleness=2
    )
    assert asynchronous_params("async", {"server_learning_rate": 0.5}) == AsyncParams(
        server_learning_rate=0.5
    )


@pytest.mark.parametrize(
    ("mode", "options", "message"),
    [
        ("sync", "buffer_size=2", r"async_options 'buffer_size=2' need mode=async"),
        ("fedbuff", "", r"mode must be sync or async, got 'fedbuff'"),
        ("async", "buffer_size", r"async_options entry 'buffer_size' must look like key=value"),
        ("async", "bufer_size=2", r"unknown async option\(s\) bufer_size"),
        ("async", "staleness_exponent=-1", r"staleness_exponent must be >= 0"),
    ],
)
def test_bad_options_are_refused_naming_them(mode: str, options: str, message: str) -> None:
    with pytest.raises(ServerTaskError, match=rf"^asynchronous mode: .*{message}"):
        asynchronous_params(mode, options)


@pytest.mark.parametrize(
    ("strategy", "options", "message"),
    [
        ("krum", "", "strategy 'krum' compares one round's updates"),
        ("fedavg", "buffer_size=5", "buffer_size=5 is more than the 4 clients"),
    ],
)
def test_what_cannot_run_asynchronously_fails_before_serving(
    tmp_path: Path, strategy: str, options: str, message: str
) -> None:
    with pytest.raises(ServerTaskError, match=message):
        run_server_task(
            run_id=RUN_ID,
            num_clients=4,
            num_rounds=1,
            model_dir=tmp_path / "m",
            strategy=strategy,
            mode="async",
            async_options=options,
            token_dir=tmp_path / "no-pod",
        )
    assert not (tmp_path / "m").exists()


def test_the_component_passes_mode_and_options_to_the_task(tmp_path: Path) -> None:
    # Options are read only with mode=async (else "need mode=async"): this refusal shows
    # that both reached the task through KFP's executor.
    run = run_executor(
        build_components().server,
        {
            "run_id": RUN_ID,
            "num_clients": 4,
            "num_rounds": 1,
            "mode": "async",
            "async_options": "buffer_size=9",
        },
        tmp_path,
        timeout=EXECUTOR_TIMEOUT,
    )
    assert run.proc.returncode != 0
    log = run.log()
    assert "ServerTaskError: strategy 'fedavg': " in log, log[-3000:]
    assert "buffer_size=9 is more than the 4 clients" in log, log[-3000:]
