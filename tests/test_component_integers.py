"""Integer inputs arrive as ints or integral floats; anything else is refused by name.

The helper's rules, then the components through KFP's own executor
(``tests.kfp_executor``: the IR's command and an ExecutorInput carrying the numbers the
way the backend may send them).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from fl_kubeflow_kfp.components import build_components

from fl_kubeflow.tasks import ParameterError, integer_param, integer_params
from fl_kubeflow.tasks.params import MAX_EXACT_INTEGER
from tests.kfp_executor import run_executor
from tests.ports import free_port

COMPONENTS = build_components()
EXECUTOR_TIMEOUT = 180.0  # one Python start-up with kfp imported, on two shared cores


@pytest.mark.parametrize(
    ("value", "expected"),
    [(8080, 8080), (8080.0, 8080), (-2.0, -2), (0.0, 0), (float(MAX_EXACT_INTEGER), 2**53)],
)
def test_ints_and_integral_floats_are_accepted(value: object, expected: int) -> None:
    result = integer_param("port", value)
    assert result == expected and type(result) is int


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (3.5, r"port must be an integer, got 3\.5 \(a fractional number\)"),
        (True, "port must be an integer, got the boolean True"),
        (False, "port must be an integer, got the boolean False"),
        (math.nan, "port must be an integer, got nan"),
        (math.inf, "port must be an integer, got inf"),
        (-math.inf, "port must be an integer, got -inf"),
        (1e21, r"port = 1e\+21 is beyond 2\*\*53"),
        (float(2**53 + 2), r"beyond 2\*\*53"),
        ("8080", "port must be an integer, got str '8080'"),
        (None, "port must be an integer, got NoneType None"),
    ],
)
def test_other_values_are_refused_naming_the_parameter(value: object, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        integer_param("port", value)
    assert issubclass(ParameterError, ValueError)


def test_integer_params_keep_the_order_given_and_name_the_bad_one() -> None:
    assert integer_params(b=2.0, a=1, c=-3.0) == (2, 1, -3)
    with pytest.raises(ParameterError, match=r"^seed must"):
        integer_params(num_clients=2.0, seed=0.25)


def test_client_ids_component_takes_an_integral_float(tmp_path: Path) -> None:
    run = run_executor(
        COMPONENTS.client_ids, {"num_clients": 3.0}, tmp_path, timeout=EXECUTOR_TIMEOUT
    )
    assert run.proc.returncode == 0, run.log()
    assert run.output_parameter() == [0, 1, 2]


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"num_clients": 2.5}, r"num_clients must be an integer, got 2\.5"),
        ({"num_clients": 1e21}, r"num_clients = 1e\+21 is beyond 2\*\*53"),
        ({"num_clients": True}, "num_clients must be an integer, got the boolean True"),
    ],
)
def test_client_ids_component_refuses_non_integers(
    tmp_path: Path, parameters: dict, message: str
) -> None:
    run = run_executor(COMPONENTS.client_ids, parameters, tmp_path, timeout=EXECUTOR_TIMEOUT)
    assert run.proc.returncode != 0
    assert re.search(f"ParameterError: {message}", run.log()), run.log()


SERVER_INTEGERS = {
    "num_clients": 2.0,
    "num_rounds": 1.0,
    "min_clients": 0.0,
    "local_epochs": 1.0,
    "batch_size": 16.0,
    "seed": 0.0,
}


def test_server_component_runs_with_every_integer_as_a_float(tmp_path: Path) -> None:
    # Nobody joins: the run fails at its join timeout, past every parameter check. The
    # timeout is an int on purpose: protojson writes a whole double without the ".0".
    parameters = {
        "run_id": "float-integers",
        **SERVER_INTEGERS,
        "port": float(free_port()),
        "join_timeout": 1,
    }
    run = run_executor(
        COMPONENTS.server,
        parameters,
        tmp_path,
        timeout=EXECUTOR_TIMEOUT,
        env={"FL_KUBEFLOW_TOKEN": ""},
    )
    assert run.proc.returncode != 0
    assert "federated run failed" in run.log() and "join" in run.log(), run.log()
    assert ParameterError.__name__ not in run.log()
    history = json.loads((run.artifacts["trained_model"] / "history.json").read_text())
    assert history["num_clients"] == 2 and history["num_rounds"] == 1
    # The report's parameter table shows the integers as integers.
    report = run.artifacts["report"].read_text()
    assert "<td>16</td>" in report and "16.0" not in report


@pytest.mark.parametrize(
    ("component", "parameters", "message"),
    [
        ("server", {**SERVER_INTEGERS, "port": 8080.5}, r"port must be an integer, got 8080\.5"),
        ("server", {**SERVER_INTEGERS, "num_rounds": math.inf}, "num_rounds must be an integer"),
        ("client", {"client_id": 0.5, "num_clients": 2.0}, r"client_id must be an integer"),
        ("client", {"client_id": 0.0, "num_clients": 2.0, "seed": 1.5}, "seed must be an integer"),
    ],
)
def test_server_and_client_components_refuse_non_integers_before_starting(
    tmp_path: Path, component: str, parameters: dict, message: str
) -> None:
    run = run_executor(
        getattr(COMPONENTS, component),
        {"run_id": "bad-integers", **parameters},
        tmp_path,
        timeout=EXECUTOR_TIMEOUT,
    )
    assert run.proc.returncode != 0
    assert re.search(f"ParameterError: {message}", run.log()), run.log()
    assert "serving" not in run.log() and "tensorflow" not in run.log().lower()
