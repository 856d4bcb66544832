"""waitress's socket loop on epoll: interest kept between turns, not rebuilt each turn.

waitress's own loop (``wasyncore.poll2``) builds a new ``select.poll`` set every
turn, asking every channel ``readable()`` and ``writable()``: Python work in
proportion to the connections held, at every turn, and a request takes several
turns. With 3,000 idle connections held a request took 3.4 ms instead of 0.2 ms and
opening the 3,000 took 20 s (benchmarks/loop_turns.py): joining N clients cost
O(N^2), and 10,000 did not all join within 240 s (benchmarks/load.md). Here each
socket is registered with one ``select.epoll`` once, and its interest (read, write)
is asked again only when it may have changed:

- after an event on it (every handler runs on this loop's thread);
- when another thread marks it (``InterestMap.changed``): the channel does so after
  a worker queues output or finishes a request, and when the guard sheds it
  (server/waitress_channel.py);
- every turn for the few objects that say their interest changes unmarked (the
  listening socket, whose readable() runs waitress's maintenance and connection
  limit; the trigger; any dispatcher that is not a marking channel; a channel whose
  body waits for a receive slot, which frees on another thread or after patience);
- all of them after waitress's ``maintenance`` (idle connections told to close)
  and, as a safety net, every ``RESCAN_EVERY`` seconds; a channel the rescan finds
  wanting what it was not registered for, with no mark following by the next
  rescan, is counted in ``missed`` (zero unless a mark was forgotten) and logged.

The channels, parser, task dispatcher and Flask app are waitress's and ours as
before; only the loop that waits for the sockets changes. Where epoll is missing
(not Linux) waitress's own loop runs.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from typing import Any

from waitress import wasyncore

log = logging.getLogger("fl_kubeflow.server")

HAS_EPOLL = hasattr(select, "epoll")
# Seconds between full rescans of every socket's interest (the safety net).
RESCAN_EVERY = 2.0
# Longest wait for an event: waitress's own loop timeout (asyncore_loop_timeout), so
# anything time-based that only a turn notices (receive-slot patience) is as prompt.
LONGEST_WAIT = 1.0

if HAS_EPOLL:
    _READ = select.EPOLLIN | select.EPOLLPRI
    _WRITE = select.EPOLLOUT
else:  # pragma: no cover - only off Linux
    _READ = _WRITE = 0


class InterestMap(dict):
    """waitress's socket map (fd -> dispatcher) that tells its loop what changed.

    waitress adds a dispatcher on accept and removes it on close; both may also
    happen on other threads (a server closed from outside). ``changed`` may be called
    from any thread.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._changed: set[int] = set()
        self._loop_thread: int | None = None
        self._wake: Any = None  # pulls the loop's trigger
        self._forget: Any = None  # the loop's: drop a socket's registration

    def __setitem__(self, fd: int, obj: Any) -> None:
        super().__setitem__(fd, obj)
        self.changed(fd)

    def __delitem__(self, fd: int) -> None:
        super().__delitem__(fd)
        # Before the socket closes (waitress deletes, then closes): its number may
        # come back with the next accept, which must be registered afresh.
        if self._forget is not None:
            self._forget(fd)

    def changed(self, fd: int | None) -> None:
        """The dispatcher on ``fd`` may want to read or write otherwise than before.

        Call after the change: the loop asks it again before it next waits. From a
        thread other than the loop's the loop is woken, once for any number of marks
        made before it looks.
        """
        if fd is None:  # closed already
            return
        with self._lock:
            first = not self._changed
            self._changed.add(fd)
        if first and self._wake is not None and threading.get_ident() != self._loop_thread:
            self._wake()

    def take_changed(self) -> set[int]:
        """The marks since the last call (the loop's, before it waits)."""
        with self._lock:
            taken, self._changed = self._changed, set()
        return taken


def mark_changed(dispatcher: Any) -> None:
    """Tell ``dispatcher``'s loop that its interest may have changed (a no-op on a
    plain map, where waitress's own loop asks every turn)."""
    changed = getattr(dispatcher._map, "changed", None)
    if changed is not None:
        changed(dispatcher._fileno)


class EpollLoop:
    """One socket loop over an ``InterestMap`` (a waitress server's ``map``).

    Args:
        map: The loop's sockets, as waitress's dispatchers add and remove them.
        wake: Wakes the loop from another thread (the server's ``pull_trigger``).
    """

    def __init__(self, map: InterestMap, wake: Any) -> None:
        self._map = map
        self._epoll = select.epoll()
        self._registered: dict[int, int] = {}  # fd -> the event mask epoll has
        self._each_turn: set[int] = set()  # fds asked again every turn
        self._next_rescan = 0.0
        # The listening sockets' fds -> when their server's maintenance runs next.
        self._servers: dict[int, float | None] = {}
        self._suspects: set[int] = set()  # found changed unmarked by the last rescan
        self.missed = 0
        self.turns = 0
        map._wake = wake
        map._forget = self._forget

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set or the map is empty; raises what a turn raises."""
        self._map._loop_thread = threading.get_ident()
        try:
            while self._map and not stop.is_set():
                self.turn()
        finally:
            # Nothing serves these sockets any more: their clients hear so at once.
            for obj in list(self._map.values()):
                with contextlib.suppress(Exception):
                    obj.close()
            self._map._forget = None
            self._epoll.close()

    def turn(self) -> None:
        """Bring the interest up to date, wait for events, and handle them."""
        now = time.monotonic()
        changed = self._map.take_changed()
        self._suspects -= changed  # their marks came, if late
        if self._maintained() or now >= self._next_rescan:
            self._rescan(changed)
            self._next_rescan = now + RESCAN_EVERY
        else:
            for fd in changed | self._each_turn:
                self._update(fd)
        wait = min(LONGEST_WAIT, max(0.0, self._next_rescan - now))
        try:
            events = self._epoll.poll(wait)
        except InterruptedError:
            return
        self.turns += 1
        changed = self._map.changed
        for fd, flags in events:
            obj = self._map.get(fd)
            if obj is None:
                continue
            wasyncore.readwrite(obj, flags)
            changed(fd)  # handled here: its interest is asked again next turn

    def _maintained(self) -> bool:
        """Ask the listening sockets now; True if one ran waitress's maintenance
        (which tells idle channels to close without marking them)."""
        ran = False
        for fd in list(self._servers):
            self._update(fd)
            server = self._map.get(fd)
            cleanup = getattr(server, "next_channel_cleanup", None)
            if self._servers.get(fd, cleanup) != cleanup:
                ran = True
            if fd in self._servers:
                self._servers[fd] = cleanup
        return ran

    def _rescan(self, marked: set[int]) -> None:
        # A socket found wanting more than it was registered for may have been marked
        # a moment later (the rescan ran between a worker's change and its mark): a
        # miss only if no mark came by the next rescan. One marked before this turn
        # (``marked``, taken already) was not missed: its change is simply asked here.
        for fd in self._suspects:
            self.missed += 1
            log.warning("socket %d's interest changed with nothing marking it", fd)
        self._suspects = set()
        for fd in list(self._map):
            before = self._registered.get(fd)
            after = self._update(fd)
            if (
                before is not None
                and after & ~before
                and fd not in self._each_turn
                and fd not in marked
            ):
                self._suspects.add(fd)
        for fd in [fd for fd in list(self._registered) if fd not in self._map]:
            self._forget(fd)

    def _update(self, fd: int) -> int:
        """Ask the dispatcher on ``fd`` what it waits for and tell epoll; the mask."""
        obj = self._map.get(fd)
        if obj is None:
            self._forget(fd)
            return 0
        mask = 0
        if obj.readable():
            mask |= _READ
        if obj.writable() and not obj.accepting:
            mask |= _WRITE
        if obj.accepting:
            self._servers.setdefault(fd, getattr(obj, "next_channel_cleanup", None))
        elif getattr(obj, "marks_interest_changes", False) and not obj.polled_each_turn():
            self._each_turn.discard(fd)
        else:
            self._each_turn.add(fd)
        # A mask of 0 stays registered: epoll still reports a reset or hang-up, and
        # the channel is closed (waitress's poll never heard of those until it read).
        old = self._registered.get(fd)
        if old == mask:
            return mask
        try:
            if old is None:
                self._epoll.register(fd, mask)
            else:
                self._epoll.modify(fd, mask)
        except FileExistsError:  # registered by an earlier socket of that number
            self._epoll.modify(fd, mask)
        except FileNotFoundError:  # that earlier socket closed: epoll dropped it
            self._epoll.register(fd, mask)
        self._registered[fd] = mask
        return mask

    def _forget(self, fd: int) -> None:
        self._each_turn.discard(fd)
        self._suspects.discard(fd)
        self._servers.pop(fd, None)
        if self._registered.pop(fd, None) is None:
            return
        # Closed already (epoll dropped it), or the loop's epoll is closed.
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(fd)


def attach_loop(server: Any) -> EpollLoop | None:
    """Give waitress ``server`` (made with an InterestMap) an epoll loop, which
    ``run_loop`` runs; None where epoll is missing (waitress's own loop runs)."""
    if not HAS_EPOLL or not isinstance(server._map, InterestMap):
        return None
    server.fl_event_loop = EpollLoop(server._map, server.pull_trigger)
    return server.fl_event_loop


def run_loop(server: Any, stop: threading.Event) -> None:
    """Run ``server``'s socket loop until ``stop``: its epoll loop, or waitress's own."""
    loop = getattr(server, "fl_event_loop", None)
    if loop is not None:
        loop.run(stop)
    else:
        server.run()
