"""usable_cpus: the affinity mask, capped by a cgroup v2 or v1 CPU limit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fl_kubeflow.cpus import cgroup_cpu_quota, usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


def _v2(root: Path, text: str) -> Path:
    (root / "cpu.max").write_text(text)
    return root


def _v1(root: Path, quota: int, period: int) -> Path:
    (root / "cpu").mkdir()
    (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return root


@pytest.mark.parametrize(
    ("text", "quota"), [("max 100000\n", None), ("150000 100000\n", 1.5), ("50000 100000", 0.5)]
)
def test_cgroup_v2_cpu_max(tmp_path, text, quota):
    assert cgroup_cpu_quota(_v2(tmp_path, text)) == quota


@pytest.mark.parametrize(("quota", "period", "cpus"), [(-1, 100000, None), (250000, 100000, 2.5)])
def test_cgroup_v1_cfs_quota(tmp_path, quota, period, cpus):
    assert cgroup_cpu_quota(_v1(tmp_path, quota, period)) == cpus


def test_no_cgroup_files_or_garbage_mean_no_limit(tmp_path):
    assert cgroup_cpu_quota(tmp_path) is None
    assert cgroup_cpu_quota(_v2(tmp_path, "garbage")) is None
    assert usable_cpus(tmp_path) == AFFINITY


def test_a_limit_caps_the_affinity_rounded_up_and_never_below_one(tmp_path):
    assert usable_cpus(_v2(tmp_path, "50000 100000")) == 1  # half a CPU: still one thread
    (tmp_path / "cpu.max").write_text("100000000 100000")  # 1000 CPUs: the affinity wins
    assert usable_cpus(tmp_path) == AFFINITY
    (tmp_path / "cpu.max").write_text("150000 100000")
    assert usable_cpus(tmp_path) == min(AFFINITY, 2)
