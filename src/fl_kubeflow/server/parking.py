"""Model long-polls parked without a thread, on waitress.

A long-poll for the next model may wait for most of ``poll_timeout``; with a worker
thread per waiting client the server held 2N + 8 threads, and 10,000 clients would
have been 20,000. Here a ``GET /v1/model`` whose head passed the check is first
asked of the federation at once (``wait_for_model`` with no wait) when waitress
would hand it to a worker. If there is no answer yet, the request stays parked on
its connection in the socket loop, holding no thread, until the federation signals
that model answers may have changed (``Federation.watch_models``) and the answer is
there, or its wait ends. Then it goes to a worker as any request does, carrying the
answer (or the refusal, or "none yet": 204), and the Flask app answers at once with
it instead of waiting (app.py's model route reads ``PARKED_KEY``).

The answer is asked for by one thread, the parker's, after the change's notifier has
let go of the federation's lock: the federation is never read half-changed. cheroot
(TLS) keeps a thread per waiting request.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from waitress.task import WSGITask

from fl_kubeflow import protocol
from fl_kubeflow.server.errors import RequestError
from fl_kubeflow.server.federation import Federation
from fl_kubeflow.server.model_waits import PARKED_KEY, ParkedOutcome

log = logging.getLogger("fl_kubeflow.server")

# Longest sleep of the parker between deadline checks when nothing changes.
LONGEST_SLEEP = 1.0


class ParkedTask(WSGITask):
    """waitress's WSGI task, passing a parked request's outcome to the app."""

    def get_environment(self) -> dict[str, Any]:
        environ = super().get_environment()
        outcome = getattr(self.request, "fl_parked", None)
        if outcome is not None:
            environ[PARKED_KEY] = outcome
        return environ


@dataclass
class _Parked:
    channel: Any
    client_id: str
    server_round: int
    deadline: float


class Parker:
    """Parks model long-polls in front of waitress's task dispatcher.

    Args:
        federation: The run whose model answers are asked for.
        dispatcher: waitress's ``ThreadedTaskDispatcher`` (the worker threads).
        poll_timeout: The server's longest long-poll, as the app caps it.
    """

    def __init__(self, federation: Federation, dispatcher: Any, poll_timeout: float) -> None:
        self._federation = federation
        self._dispatcher = dispatcher
        self._poll_timeout = poll_timeout
        self._lock = threading.Lock()
        self._parked: dict[int, _Parked] = {}  # by id(channel)
        self._deadlines: list[tuple[float, int, int]] = []  # (deadline, order, id(channel))
        self._order = itertools.count()
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._generation = 0
        federation.watch_models(self._on_change)
        self._thread = threading.Thread(target=self._run, name="long-poll-parker", daemon=True)
        self._thread.start()

    # waitress calls these two, as it would its dispatcher's.
    def add_task(self, channel: Any) -> None:
        """Hand ``channel``'s first request to a worker, or park it if it is a model
        long-poll with no answer yet."""
        request = channel.requests[0]
        poll = self._model_poll(request)
        if poll is None:
            self._dispatcher.add_task(channel)
            return
        client_id, server_round, wait = poll
        with self._lock:
            generation = self._generation
        outcome = self._ask(client_id, server_round)
        if outcome is not None:
            # waitress holds the channel's requests_lock here (a Lock: not taken again).
            request.fl_parked = outcome
            self._dispatcher.add_task(channel)
            return
        with self._lock:
            self._park(_Parked(channel, client_id, server_round, time.monotonic() + wait))
            if self._generation != generation:  # a change came while we asked
                self._changed.set()

    def __getattr__(self, name: str) -> Any:
        # Everything else (shutdown, thread counts) is the dispatcher's.
        return getattr(self._dispatcher, name)

    def forget(self, channel: Any) -> None:
        """``channel`` closed: its parked request, if any, is dropped."""
        with self._lock:
            self._parked.pop(id(channel), None)

    def parked(self) -> int:
        """How many long-polls are parked now."""
        with self._lock:
            return len(self._parked)

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()

    def _model_poll(self, request: Any) -> tuple[str, int, float] | None:
        """(client id, round, wait) of a parkable long-poll; None for anything else,
        which the app answers as ever (a malformed one with its 400)."""
        if request.error or request.command != "GET" or request.path != protocol.MODEL_PATH:
            return None
        client_id = request.headers.get(protocol.CLIENT_ID_HEADER.upper().replace("-", "_"))
        query = parse_qs(request.query, keep_blank_values=True)
        rounds = query.get(protocol.ROUND_PARAM, [])
        waits = query.get(protocol.WAIT_PARAM, [str(self._poll_timeout)])
        # Only what the app surely accepts (plain digits, a positive number); anything
        # else it answers itself, as ever.
        if not client_id or len(rounds) != 1 or len(waits) != 1:
            return None
        if not (rounds[0].isascii() and rounds[0].isdigit() and len(rounds[0]) <= 18):
            return None
        try:
            wait = float(waits[0])
        except ValueError:
            return None
        if not wait > 0:  # no wait (or NaN): nothing to park
            return None
        server_round = int(rounds[0])
        return client_id, server_round, min(wait, self._poll_timeout)

    def _ask(self, client_id: str, server_round: int) -> ParkedOutcome | None:
        """Ask the federation now: what to answer, or None for "not yet"."""
        try:
            answer = self._federation.wait_for_model(client_id, server_round, 0.0)
        except RequestError as exc:
            return ParkedOutcome(refusal=exc)
        return None if answer is None else ParkedOutcome(answer=answer)

    def _hand_over(self, channel: Any, outcome: ParkedOutcome) -> None:
        """From the parker's thread: the request goes to a worker with ``outcome``."""
        with channel.requests_lock:
            if not channel.requests:  # the connection closed meanwhile
                return
            channel.requests[0].fl_parked = outcome
        self._dispatcher.add_task(channel)

    def _park(self, parked: _Parked) -> None:
        key = id(parked.channel)
        self._parked[key] = parked
        heapq.heappush(self._deadlines, (parked.deadline, next(self._order), key))

    def _on_change(self) -> None:
        # Under the federation's lock, mid-change: only take note.
        self._generation += 1
        self._changed.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                first = self._deadlines[0][0] if self._deadlines else None
            sleep = LONGEST_SLEEP if first is None else first - time.monotonic()
            if sleep > 0:
                self._changed.wait(min(sleep, LONGEST_SLEEP))
            if self._stop.is_set():
                return
            try:
                self._expire(time.monotonic())
                if self._changed.is_set():
                    self._changed.clear()
                    self._ask_again()
            except Exception:  # the parker must outlive any one request
                log.exception("long-poll parker")

    def _expire(self, now: float) -> None:
        """Hand over every parked request whose wait has ended, with no model (204)."""
        due = []
        with self._lock:
            while self._deadlines and self._deadlines[0][0] <= now:
                deadline, _, key = heapq.heappop(self._deadlines)
                parked = self._parked.get(key)
                if parked is not None and parked.deadline == deadline:
                    del self._parked[key]
                    due.append(parked)
        for parked in due:
            self._hand_over(parked.channel, ParkedOutcome())

    def _ask_again(self) -> None:
        """Ask again for every parked request; hand over those with an answer now."""
        with self._lock:
            waiting = list(self._parked.items())
        for key, parked in waiting:
            with self._lock:
                if self._parked.get(key) is not parked:
                    continue  # closed meanwhile
                del self._parked[key]
            outcome = self._ask(parked.client_id, parked.server_round)
            if outcome is not None:
                self._hand_over(parked.channel, outcome)
                continue
            with self._lock:
                self._parked[key] = parked  # its deadline is still in the heap
