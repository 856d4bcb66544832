"""Entry points of the pipeline's pods: one plain function per KFP component.

The components in ``components/`` (outside this package) are thin wrappers that call
these, so everything a pod does can run and be tested without KFP; this package never
imports kfp, and nothing here imports TensorFlow at import time.
"""

from fl_kubeflow.tasks.cleanup_task import run_cleanup_task
from fl_kubeflow.tasks.client_task import (
    ClientTaskError,
    ClientTaskResult,
    client_ids,
    join_federation,
    resolve_server_address,
    run_client_task,
)
from fl_kubeflow.tasks.params import ParameterError, integer_param, integer_params
from fl_kubeflow.tasks.server_task import (
    ServerTaskError,
    ServerTaskResult,
    run_server_task,
)

__all__ = [
    "ClientTaskError",
    "ClientTaskResult",
    "ParameterError",
    "ServerTaskError",
    "ServerTaskResult",
    "client_ids",
    "integer_param",
    "integer_params",
    "join_federation",
    "resolve_server_address",
    "run_cleanup_task",
    "run_client_task",
    "run_server_task",
]
