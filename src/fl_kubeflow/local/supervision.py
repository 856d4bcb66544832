"""Watching a run's processes on this machine until the server exits.

``fl-kubeflow local`` and ``fl-kubeflow simulate`` both start one server and several
other processes (clients, workers), print progress from the server's /v1/status and
stop at the first failure that ends the run. This is that loop; what a failed
client or worker means (the end of the run, or a warning while the quorum is still
reachable) is the caller's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fl_kubeflow.local.processes import Child
from fl_kubeflow.local.progress import ProgressReporter


@dataclass(frozen=True)
class Pace:
    """How often the loop looks: at the processes, and at the server's status."""

    poll_s: float
    status_s: float


def supervise(
    server: Child,
    others: Sequence[Child],
    reporter: ProgressReporter,
    deadline: float,
    pace: Pace,
    on_failure: Callable[[Child, str], None],
    error: Callable[[str], Exception],
    timeout_message: str,
) -> None:
    """Return once the server exits with 0; raise ``error(...)`` if it fails or the
    ``deadline`` (monotonic) passes.

    Args:
        server: The server's process.
        others: The processes it serves (clients, workers).
        reporter: Prints progress lines, polled every ``pace.status_s``.
        deadline: When the run has taken too long (``time.monotonic()``).
        pace: How often to look.
        on_failure: Called once per process of ``others`` that exited non-zero, with
            a message naming it and its last words; it may raise to end the run.
        error: Makes the exception a failed server or a passed deadline raises.
        timeout_message: What that exception says when the deadline passed.
    """
    failed: set[str] = set()
    next_status = 0.0
    while True:
        now = time.monotonic()
        if now >= next_status:
            reporter.poll()
            next_status = now + pace.status_s
        code = server.returncode
        if code is not None:
            if code != 0:
                raise error(f"the server failed (exit {code}):\n{server.last_words()}")
            return
        for child in others:
            if child.name in failed or child.returncode in (None, 0):
                continue
            failed.add(child.name)
            on_failure(
                child, f"{child.name} failed (exit {child.returncode}):\n{child.last_words()}"
            )
        if now >= deadline:
            raise error(timeout_message)
        time.sleep(pace.poll_s)
