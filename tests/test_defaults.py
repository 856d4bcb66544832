"""The KFP components repeat the runtime's defaults as literals; they must agree.

KFP copies a component function's source into the pipeline YAML, so its signature
cannot name ``fl_kubeflow.defaults``; this test is what keeps the two in step.
"""

from __future__ import annotations

import inspect

import pytest
from fl_kubeflow_kfp.components import functions

from fl_kubeflow import defaults
from fl_kubeflow.kube.naming import DEFAULT_PORT
from fl_kubeflow.tasks import run_server_task

# What the server task does when the component's value is left out (plain aggregation).
SERVER_TASK = inspect.signature(run_server_task).parameters

TRAINING = {
    "trainer": defaults.TRAINER,
    "dataset": defaults.DATASET,
    "partition": defaults.PARTITION,
    "model": defaults.MODEL,
    "local_epochs": defaults.LOCAL_EPOCHS,
    "batch_size": defaults.BATCH_SIZE,
    "learning_rate": defaults.LEARNING_RATE,
    "optimizer": defaults.OPTIMIZER,
    "seed": defaults.SEED,
    "port": DEFAULT_PORT,
}

EXPECTED = {
    functions.fl_server: {
        **TRAINING,
        "min_clients": defaults.MIN_CLIENTS,
        "join_timeout": defaults.PIPELINE_JOIN_TIMEOUT,
        "round_timeout": defaults.ROUND_TIMEOUT,
        "strategy": defaults.STRATEGY,
        "credentials_reload": defaults.CREDENTIALS_RELOAD,
        "secure_aggregation": SERVER_TASK["secure_aggregation"].default,
        "secagg_options": SERVER_TASK["secagg_options"].default,
        "mode": SERVER_TASK["mode"].default,
        "async_options": SERVER_TASK["async_options"].default,
    },
    functions.fl_client: {
        **TRAINING,
        "label_column": defaults.LABEL_COLUMN,
        "feature_columns": defaults.FEATURE_COLUMNS,
        "data_timeout": defaults.DATA_TIMEOUT,
        "retry_timeout": defaults.PIPELINE_JOIN_TIMEOUT,
        "round_wait_timeout": defaults.ROUND_WAIT_TIMEOUT,
    },
}


@pytest.mark.parametrize("component", list(EXPECTED), ids=lambda f: f.__name__)
def test_component_defaults_match_the_runtime(component) -> None:
    parameters = inspect.signature(component).parameters
    got = {name: parameters[name].default for name in EXPECTED[component]}
    assert got == EXPECTED[component]
    for name, value in got.items():
        assert type(value) is type(EXPECTED[component][name]), name


def test_quorum_zero_or_none_means_every_client() -> None:
    assert defaults.quorum(5, None) == 5
    assert defaults.quorum(5, 0) == 5
    assert defaults.quorum(5, 3) == 3
