"""Find processes by command line under a given process, from /proc (Linux), for tests.

The way an operator finds the server process inside a pod: its command line holds
``-m fl_kubeflow.tasks.server_process`` (on a node: the same, among the container's
processes).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

SERVER_PROCESS = "fl_kubeflow.tasks.server_process"


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: the ppid follows the last ")".
    return int(stat.rsplit(")", 1)[1].split()[1])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def descendants_running(root: int, needle: str) -> list[int]:
    """Live processes below ``root`` whose command line contains ``needle``."""
    parents = {int(p): _parent(int(p)) for p in os.listdir("/proc") if p.isdigit()}
    found = []
    for pid, parent in parents.items():
        chain, seen = parent, set()
        while chain and chain not in seen and chain != root:
            seen.add(chain)
            chain = parents.get(chain)
        if chain == root and needle in _cmdline(pid) and is_alive(pid):
            found.append(pid)
    return sorted(found)


def is_alive(pid: int) -> bool:
    """Running, not a zombie (a killed child its parent has not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for_one(root: int, needle: str, timeout: float, exclude: set[int] = frozenset()) -> int:
    """The one process below ``root`` running ``needle`` (not in ``exclude``), polled for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [pid for pid in descendants_running(root, needle) if pid not in exclude]
        if len(found) == 1:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no single process {needle!r} under pid {root} within {timeout:g}s")


def wait_gone(pid: int, timeout: float) -> None:
    """Poll until ``pid`` no longer runs."""
    deadline = time.monotonic() + timeout
    while is_alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still running after {timeout:g}s")
        time.sleep(0.05)
