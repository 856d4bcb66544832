"""The pipeline's secure_aggregation and secagg_options reach the server task, checked first.

Parsed by ``secure_aggregation_params``; a strategy or option that cannot work is refused
before the Service or the server exists, by the task and through KFP's own executor
running the fl-server component (``tests.kfp_executor``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fl_kubeflow_kfp.components import build_components

from fl_kubeflow.secagg.params import SecAggParams
from fl_kubeflow.tasks.server_task import (
    ServerTaskError,
    run_server_task,
    secure_aggregation_params,
)
from tests.kfp_executor import run_executor

RUN_ID = "5" + "0" * 35
EXECUTOR_TIMEOUT = 180.0  # one Python start-up with kfp imported, on two shared cores


def test_options_parse_from_pairs_or_a_mapping() -> None:
    assert secure_aggregation_params(False) is None
    assert secure_aggregation_params(True) == SecAggParams()
    assert secure_aggregation_params(True, " bits=64, max-weight=5000,timeout=7.5 ,") == (
        SecAggParams(bits=64, max_weight=5000, timeout=7.5)
    )
    assert secure_aggregation_params(True, {"range": 0.25}) == SecAggParams(range=0.25)


@pytest.mark.parametrize(
    ("enabled", "options", "message"),
    [
        (False, "bits=64", r"secagg_options 'bits=64' need secure_aggregation=true"),
        (True, "bits", r"secagg_options entry 'bits' must look like key=value"),
        (True, "bits=32,bits=64", r"secagg_options entry bits is given twice"),
        (True, "bitz=32", r"bitz"),
        (True, "range=-1", r"range"),
    ],
)
def test_bad_options_are_refused_naming_them(enabled: bool, options: str, message: str) -> None:
    with pytest.raises(ServerTaskError, match=rf"^secure aggregation: .*{message}"):
        secure_aggregation_params(enabled, options)


@pytest.mark.parametrize(
    ("strategy", "strategy_options", "message"),
    [
        ("krum", "{}", "needs every client's update"),
        ("fedavg", '{"noise_multiplier": 1, "clipping_norm": 1}', "use clipping=client"),
    ],
)
def test_strategies_that_cannot_work_fail_before_serving(
    tmp_path: Path, strategy: str, strategy_options: str, message: str
) -> None:
    with pytest.raises(ServerTaskError, match=message):
        run_server_task(
            run_id=RUN_ID,
            num_clients=4,
            num_rounds=1,
            model_dir=tmp_path / "m",
            strategy=strategy,
            strategy_options=strategy_options,
            secure_aggregation=True,
            token_dir=tmp_path / "no-pod",
        )
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        # The switch reaches the task: the strategy is checked against it.
        ({"strategy": "fedmedian"}, "strategy 'fedmedian' needs every client's update"),
        # The options reach it too, parsed and checked by SecAggParams.
        ({"secagg_options": "bits=48,timeout=5"}, "ServerTaskError: secure aggregation: "),
    ],
)
def test_the_component_passes_both_to_the_task(
    tmp_path: Path, parameters: dict[str, Any], message: str
) -> None:
    run = run_executor(
        build_components().server,
        {
            "run_id": RUN_ID,
            "num_clients": 4,
            "num_rounds": 1,
            "secure_aggregation": True,
            **parameters,
        },
        tmp_path,
        timeout=EXECUTOR_TIMEOUT,
    )
    assert run.proc.returncode != 0
    log = run.log()
    assert "ServerTaskError" in log and message in log, log[-3000:]
    if "secagg_options" in parameters:
        assert "bits" in log.split(message, 1)[1].splitlines()[0]
        assert "48" in log.split(message, 1)[1].splitlines()[0]
