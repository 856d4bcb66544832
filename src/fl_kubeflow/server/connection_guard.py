"""Deadlines and a separate cap for the connections no client has vouched for yet.

A connection is a *stranger's* until one of its requests passes the head check as a
client's (server/header_check.py). A stranger must deliver each request head (line
and headers) within ``head_timeout`` of its accept or of its last response, and may
stay idle between requests no longer than that; a client's connection must deliver
a head within ``head_timeout`` of its first byte, and idles as long as the WSGI
server's idle timeout allows (its long-polls are requests in progress, never idle).
The deadlines run from those moments, not from each read, so trickling a byte now
and then buys nothing. At most ``max_strangers`` strangers are held at once: a new
connection beyond that sheds the oldest stranger not being served, so a flood of
them can never take the capacity the clients need.

Both WSGI servers report to one ``ConnectionGuard`` (from any thread); its watchdog
thread closes what is overdue through each connection's ``shed`` callback. Closures
are counted (``fl_requests_rejected_total{reason=head_timeout|shed}``) and logged as
totals at most once a ``LOG_EVERY``, never a line per connection.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

log = logging.getLogger("fl_kubeflow.server")

HEAD_TIMEOUT = "head_timeout"
SHED = "shed"
LOG_EVERY = 60.0
# The watchdog's tick, as a fraction of head_timeout (and at most a second).
TICKS_PER_TIMEOUT = 4


@dataclass(eq=False)
class _Watched:
    key: Hashable
    shed: Callable[[], None]
    since: float
    deadline: float | None  # None while a request is being served, or a client's idles
    trusted: bool = False


class ConnectionGuard:
    """Head deadlines and the strangers' cap, for every connection of one server.

    Args:
        head_timeout: Seconds a request head may take; also a stranger's idle limit.
        max_strangers: Connections not yet shown to be a client's, held at once.
        count: Called with ``head_timeout`` or ``shed`` for each connection closed.
    """

    def __init__(
        self, head_timeout: float, max_strangers: int, count: Callable[[str], None]
    ) -> None:
        self.head_timeout = head_timeout
        self.max_strangers = max_strangers
        self._count = count
        self._lock = threading.Lock()
        self._watched: dict[Hashable, _Watched] = {}  # in order of accept
        # The untrusted among them, also in order of accept: an accept looks at these
        # only, not at every client's connection (10,000 of them at 10,000 clients).
        self._strangers: dict[Hashable, _Watched] = {}
        self._closed = {HEAD_TIMEOUT: 0, SHED: 0}
        self._logged = dict(self._closed)
        self._next_log = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the watchdog thread (a daemon; ``stop`` ends it)."""
        self._thread = threading.Thread(target=self._watch, name="connection-guard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def opened(self, key: Hashable, shed: Callable[[], None]) -> None:
        """A connection was accepted: a stranger until ``head_done(trusted=True)``."""
        now = time.monotonic()
        with self._lock:
            watched = _Watched(key, shed, now, now + self.head_timeout)
            self._watched[key] = self._strangers[key] = watched
            excess = len(self._strangers) - self.max_strangers
            victims = []
            if excess > 0:
                # Oldest first, and never one being served (deadline None).
                for stranger in self._strangers.values():
                    if stranger.deadline is not None:
                        victims.append(stranger)
                        if len(victims) == excess:
                            break
                self._forget(victims)
        for victim in victims:
            self._close(victim, SHED)

    def head_begun(self, key: Hashable) -> None:
        """A request's first byte arrived: a client's connection's head deadline starts."""
        with self._lock:
            watched = self._watched.get(key)
            if watched is not None and watched.deadline is None:
                watched.deadline = time.monotonic() + self.head_timeout

    def head_done(self, key: Hashable, trusted: bool) -> None:
        """A request head is complete: no deadline while it is served."""
        with self._lock:
            watched = self._watched.get(key)
            if watched is not None:
                watched.deadline = None
                if trusted:
                    watched.trusted = True
                    self._strangers.pop(key, None)

    def served(self, key: Hashable) -> None:
        """A response went out: a stranger has ``head_timeout`` for its next head."""
        with self._lock:
            watched = self._watched.get(key)
            if watched is not None and not watched.trusted:
                watched.deadline = time.monotonic() + self.head_timeout

    def closed(self, key: Hashable) -> None:
        with self._lock:
            self._watched.pop(key, None)
            self._strangers.pop(key, None)

    def sweep(self, now: float | None = None) -> int:
        """Close every connection past its deadline; return how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            overdue = [
                w for w in self._watched.values() if w.deadline is not None and w.deadline < now
            ]
            self._forget(overdue)
        for watched in overdue:
            self._close(watched, HEAD_TIMEOUT)
        self._log_totals(now)
        return len(overdue)

    def _forget(self, closing: list[_Watched]) -> None:
        """Stop watching connections about to be closed (under the lock): closed once,
        and no longer counted as strangers while they close."""
        for watched in closing:
            self._watched.pop(watched.key, None)
            self._strangers.pop(watched.key, None)

    def _close(self, watched: _Watched, reason: str) -> None:
        with contextlib.suppress(OSError):  # gone already
            watched.shed()
        with self._lock:
            self._closed[reason] += 1
        self._count(reason)

    def _watch(self) -> None:
        tick = min(1.0, self.head_timeout / TICKS_PER_TIMEOUT)
        while not self._stop.wait(tick):
            self.sweep()

    def _log_totals(self, now: float) -> None:
        if now < self._next_log or self._closed == self._logged:
            return
        self._next_log = now + LOG_EVERY
        self._logged = dict(self._closed)
        log.warning(
            "connections closed so far: %d past their %gs head deadline, %d strangers shed "
            "beyond %d held at once (fl_requests_rejected_total)",
            self._closed[HEAD_TIMEOUT],
            self.head_timeout,
            self._closed[SHED],
            self.max_strangers,
        )
