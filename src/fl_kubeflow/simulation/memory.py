"""Peak resident memory of a group of processes, sampled together over time.

Every process is read the same way (psutil if installed, else /proc/PID/statm), and
the peak of their sum is the peak of the sums of one sample, not the sum of each
process's own peak (which would count moments that never coincided).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

SAMPLE_INTERVAL_S = 0.05


def _statm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reader() -> Callable[[int], int]:
    try:
        import psutil
    except ImportError:
        return _statm_rss
    return lambda pid: psutil.Process(pid).memory_info().rss


class PeakMemory:
    """Samples the RSS of ``pids()`` every ``interval`` seconds on a daemon thread.

    Args:
        pids: The processes to sample, by role (asked again at every sample: workers
            start after the server).
        interval: Seconds between samples.
    """

    def __init__(
        self, pids: Callable[[], dict[str, Sequence[int]]], interval: float = SAMPLE_INTERVAL_S
    ) -> None:
        self.pids = pids
        self.interval = interval
        self.read = _reader()
        self.peaks: dict[str, list[int]] = {}
        self.peak_sum = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory", daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5 * self.interval + 1)

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self) -> None:
        """Read every process once and keep the peaks."""
        total = 0
        for role, pids in self.pids().items():
            peaks = self.peaks.setdefault(role, [0] * len(pids))
            peaks.extend([0] * (len(pids) - len(peaks)))
            for i, pid in enumerate(pids):
                try:
                    rss = self.read(pid)
                except Exception:  # gone between the listing and the read (OSError, psutil's)
                    continue
                peaks[i] = max(peaks[i], rss)
                total += rss
        self.peak_sum = max(self.peak_sum, total)
        self.samples += 1

    def as_dict(self) -> dict[str, object]:
        """``{"server": bytes, "workers": [bytes...], "sum": bytes, "samples": n}``."""
        return {
            "server": max(self.peaks.get("server", [0]) or [0]),
            "workers": self.peaks.get("workers", []),
            "sum": self.peak_sum,
            "samples": self.samples,
            "reader": "psutil" if self.read is not _statm_rss else "/proc/PID/statm",
        }
