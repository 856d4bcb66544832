"""How many CPUs this process may keep busy: its affinity, capped by a cgroup CPU quota.

In a Kubernetes pod with a CPU limit, ``os.sched_getaffinity`` still lists every
core of the node; the limit is a cgroup quota (``cpu.max`` in cgroup v2,
``cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` in v1). Threads beyond it only
take turns.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs in this process's affinity mask, at most its cgroup quota rounded up (>= 1)."""
    count = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """The CPU limit in CPUs (e.g. 1.5), or None when there is none or it cannot be read."""
    try:
        limit, period = (cgroup_root / "cpu.max").read_text().split()[:2]  # v2
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())  # v1
        period = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
