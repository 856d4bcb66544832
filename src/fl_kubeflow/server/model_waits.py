"""Wake a waiting long-poll for a model only when its answer may have changed.

The federation's state sits behind one condition, and every change notifies it: an
update accepted, a client joined, a stage closed. A client waiting for the next
round's model cares about few of those. Woken by all of them, N waiting clients
times N updates a round made N squared wake-ups (benchmarks/load.md: 59 s rounds at
1,000 clients, the server's CPU growing with N squared). Here the model waiters wait
on a condition of their own, on the same lock, notified only when the federation's
*model epoch* (what any waiter's answer depends on besides its own requests: phase,
round, revocations) differs from the last one seen: a few times a round. A secure
round's stage long-polls (roster, inbox, unmask request) wait the same way on a
second one, with the stage in their epoch (``Federation._stage_epoch``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fl_kubeflow.server.errors import RequestError
    from fl_kubeflow.server.federation import ModelAnswer

# A model epoch that differs from every epoch: "anything may have changed".
ANY_CHANGE = None
# The WSGI environ key of a parked long-poll's outcome (server/parking.py), which the
# app's model route answers with instead of waiting.
PARKED_KEY = "fl_kubeflow.parked"


@dataclass(frozen=True)
class ParkedOutcome:
    """What a parked long-poll came to: a model, a refusal, or nothing in its wait."""

    answer: ModelAnswer | None = None
    refusal: RequestError | None = None

    def result(self) -> ModelAnswer | None:
        """The answer (None: none within the wait, 204); raises the refusal."""
        if self.refusal is not None:
            raise self.refusal
        return self.answer


class ModelWaits:
    """The model long-polls' condition, notified when the model epoch changes.

    Args:
        lock: The federation's lock (its condition's).
        epoch: The current model epoch, read under the lock; ``ANY_CHANGE`` (None)
            when the federation cannot say, which wakes the waiters at every change.
    """

    def __init__(self, lock: Any, epoch: Callable[[], Hashable | None]) -> None:
        self._condition = threading.Condition(lock)
        self._epoch = epoch
        self._seen: Hashable | None = object()  # equal to no epoch: the first change wakes
        self._listeners: list[Callable[[], None]] = []

    def listen(self, listener: Callable[[], None]) -> None:
        """Also call ``listener`` at each epoch change, under the lock: it must only take
        note (set an event), never call back into the federation."""
        self._listeners.append(listener)

    def changed(self) -> None:
        """Something in the federation changed (under its lock): wake the waiters if the
        epoch did."""
        epoch = self._epoch()
        if epoch is not ANY_CHANGE and epoch == self._seen:
            return
        self._seen = epoch
        self._condition.notify_all()
        for listener in self._listeners:
            listener()

    def wait(self, timeout: float) -> None:
        """Wait (under the lock) for an epoch change, at most ``timeout`` seconds."""
        self._condition.wait(timeout)


class NotifyingCondition(threading.Condition):
    """A condition whose ``notify_all`` also calls ``on_notify`` (under its lock)."""

    def __init__(self, lock: Any, on_notify: Callable[[], None]) -> None:
        super().__init__(lock)
        self._on_notify = on_notify

    def notify_all(self) -> None:
        super().notify_all()
        self._on_notify()
