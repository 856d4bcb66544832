"""Start the e2e node cluster and build the project's image beside the other tests.

``scripts/test.sh`` runs ``python -m tests.e2e.prestart STATUS_FILE`` in the background
while the non-e2e tests run, and names the file to the e2e run as ``FL_E2E_PRESTART``; the
``node_cluster`` fixture (``tests/e2e/conftest.py``) waits for it (:func:`wait_for_status`)
and adopts the cluster: it tears it down at the end and checks nothing is left behind, as for
a cluster it started itself. This process holds the cluster's daemons (they die with it) until
SIGTERM, the hold timeout, or the death of its own parent (the test script), and then runs
:func:`tests.e2e.node_cluster.down` whatever state the cluster is in.

The status file is JSON, replaced atomically: ``state`` is ``starting``, then ``ready``
(``timings``, ``image``, ``image_built``, ``image_seconds``, ``seconds``), ``failed``
(``reason``), ``unavailable`` (``reason``: the prerequisites are missing; the fixture then
skips or fails as it would without a prestart) or ``manual`` (a cluster started by hand is
running outside CI; the fixture reuses it as usual).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from tests.e2e import node_cluster as nc
from tests.e2e.daemons import ClusterStartError, alive

# What the holder waits at most once the cluster is up, unless told: CI's whole budget.
DEFAULT_HOLD_TIMEOUT = 5400.0
FINAL_STATES = ("ready", "failed", "unavailable", "manual")


def write_status(path: Path, **status: Any) -> None:
    """Replace ``path`` with ``status`` as JSON in one rename, so a reader never sees half."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"pid": os.getpid(), **status}))
    partial.replace(path)


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def wait_for_status(path: Path, timeout: float, interval: float = 0.5) -> dict[str, Any]:
    """The holder's final status; ClusterStartError if it died before writing one, or timed out."""
    deadline = time.monotonic() + timeout
    while True:
        status = read_status(path)
        if status and status.get("state") in FINAL_STATES:
            return status
        if status and not alive(int(status["pid"])):
            raise ClusterStartError(
                f"the prestart (pid {status['pid']}) exited while {status.get('state')}; "
                f"its log is beside {path}"
            )
        if time.monotonic() >= deadline:
            raise ClusterStartError(
                f"timed out after {timeout:.0f}s waiting for the prestarted cluster "
                f"(status {status}); its log is beside {path}"
            )
        time.sleep(interval)


class _Stop(BaseException):
    """Raised by the SIGTERM/SIGINT handler: unwinds whatever runs, then the teardown."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def _die_with_parent() -> None:
    # SIGTERM when the test script dies, even by SIGKILL; it runs the same teardown.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _reap_children() -> None:
    # Daemons the e2e fixture's teardown stopped are our children: no zombies left.
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def hold(status_file: Path, hold_timeout: float) -> int:
    layout, timeouts = nc.Layout.from_env(), nc.Timeouts.from_env()
    parent = os.getppid()
    _die_with_parent()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    if os.getppid() != parent:  # it died before the death signal was armed
        return 1
    problem = nc.prerequisites_problem()
    if problem:
        write_status(status_file, state="unavailable", reason=problem)
        return 0
    if not nc.is_ci():
        running = nc.running_info(layout)
        if running is not None and running.owner == "manual":
            write_status(status_file, state="manual")
            return 0
    started = time.monotonic()
    write_status(status_file, state="starting")
    try:
        try:
            info = nc.up(layout, timeouts, owner=f"prestart-{os.getpid()}", die_with_parent=True)
            image_started = time.monotonic()
            image, built = nc.build_project_image(layout, timeouts)
        except ClusterStartError as exc:
            write_status(status_file, state="failed", reason=str(exc))
            return 1
        finished = time.monotonic()
        write_status(
            status_file,
            state="ready",
            timings=info.timings,
            image=image,
            image_built=built,
            image_seconds=round(finished - image_started, 1),
            seconds=round(finished - started, 1),
        )
        deadline = finished + hold_timeout
        while time.monotonic() < deadline:
            _reap_children()
            time.sleep(1.0)
        return 0
    except _Stop:
        return 0
    finally:
        # A second signal must not cut the teardown short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for note in nc.down(layout, timeouts):
            print(f"prestart: down: {note}", flush=True)
        _reap_children()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.e2e.prestart",
        description="Start the e2e node cluster and build the image, then hold it until "
        "SIGTERM (see scripts/test.sh). Run from the repository root.",
    )
    parser.add_argument("status_file", type=Path, help="where to write the JSON status")
    parser.add_argument(
        "--hold-timeout",
        type=float,
        default=DEFAULT_HOLD_TIMEOUT,
        help="seconds to hold the cluster once up before tearing it down unasked",
    )
    args = parser.parse_args(argv)
    return hold(args.status_file, args.hold_timeout)


if __name__ == "__main__":
    sys.exit(main())
