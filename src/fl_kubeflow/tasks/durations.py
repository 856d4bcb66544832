"""How long the server task may take, from the run's timeouts: one fact for every bound.

The task's child-process supervisor kills a server process that outlives one attempt,
and the pipeline sizes its retry deadline (Argo's ``backoff.maxDuration``, counted from
the first attempt's start) from the whole task. Only ``server.config`` is imported, so
the pipeline can use this at compile time.
"""

from __future__ import annotations

from fl_kubeflow.server.config import ServerConfig

# Interpreter start-up, imports and binding, on top of the federation's own timeouts.
START_ALLOWANCE = 60.0
# Publishing the Service and the token before serving, deleting the Service after.
SERVICE_ALLOWANCE = 60.0
# Exporting builds one model and saves it; minutes would mean something is wrong.
DEFAULT_EXPORT_TIMEOUT = 900.0


def attempt_seconds(
    num_rounds: int,
    join_timeout: float,
    round_timeout: float,
    grace_period: float = ServerConfig.grace_period,
) -> float:
    """Longest one server process can run: start-up, joining, every round, the grace period.

    A resumed process waits for the clients again and runs at most the remaining rounds,
    so this bounds every attempt.
    """
    return START_ALLOWANCE + join_timeout + num_rounds * round_timeout + grace_period


def task_seconds(
    num_rounds: int,
    join_timeout: float,
    round_timeout: float,
    max_restarts: int,
    export_timeout: float = DEFAULT_EXPORT_TIMEOUT,
) -> float:
    """Longest one server task (pod) can run: every in-pod restart, the Service, the export."""
    attempts = (max_restarts + 1) * attempt_seconds(num_rounds, join_timeout, round_timeout)
    return attempts + SERVICE_ALLOWANCE + export_timeout
