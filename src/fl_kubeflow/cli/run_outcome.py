"""How ``fl-kubeflow local`` and ``fl-kubeflow simulate`` end: failure, interrupt or summary.

Both run a federation of local processes to its end. A run that failed, or was
interrupted, is one line on stderr and an exit code; a finished one is its rounds'
table on stdout, which the command follows with what is its own.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")

FAILED = 1
INTERRUPTED = 130  # as a shell reports a command stopped by SIGINT


def emit(line: str) -> None:
    """A progress or summary line, on stdout at once."""
    print(line, flush=True)


def run_to_end(
    command: str, run: Callable[[], R], failure: type[Exception]
) -> tuple[R | None, int]:
    """``run()`` and the exit code: 0 with its result, or None with ``FAILED`` (a
    ``failure`` raised, its message printed) or ``INTERRUPTED`` (Ctrl-C, a SIGTERM made
    a KeyboardInterrupt; the run stopped its processes on the way out)."""
    try:
        return run(), 0
    except failure as exc:
        print(f"fl-kubeflow {command}: run failed: {exc}", file=sys.stderr, flush=True)
        return None, FAILED
    except KeyboardInterrupt:
        print(f"fl-kubeflow {command}: interrupted; every process stopped", file=sys.stderr)
        return None, INTERRUPTED


def emit_rounds(history: dict[str, Any]) -> None:
    """The finished run's table of rounds, between blank lines."""
    from fl_kubeflow.local.runner import summary_lines

    emit("")
    for line in summary_lines(history):
        emit(line)
    emit("")
