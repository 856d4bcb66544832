"""A logger whose repeated warning is written at most once in a while."""

from __future__ import annotations

import logging
import threading
import time


class ThrottledWarnings:
    """``warning`` passes to ``logger`` at most once per ``interval`` seconds, saying how
    many it held back since.

    waitress's task dispatcher warns "Task queue depth is N" at every request queued
    while every worker is busy: at N = 1,000 clients that is nearly every request, each
    formatted and written to stderr with the dispatcher's lock held (5% of the server's
    time in benchmarks/load.md). Once a few seconds still tells an operator the queue
    is deep.

    Args:
        logger: Where the warnings go.
        interval: Seconds between two warnings written.
    """

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self._logger = logger
        self._interval = interval
        self._lock = threading.Lock()
        self._next = 0.0
        self._held_back = 0

    def warning(self, message: str, *args: object) -> None:
        """Write ``message % args`` unless one was written less than ``interval`` ago."""
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._held_back += 1
                return
            held_back, self._held_back = self._held_back, 0
            self._next = now + self._interval
        if held_back:
            message += f" ({held_back} more such warnings in the last {self._interval:g} s)"
        self._logger.warning(message, *args)
