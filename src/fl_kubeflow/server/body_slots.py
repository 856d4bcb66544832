"""Large request bodies received straight into memory, a few at a time.

waitress receives a request body into a buffer that, past 512 KiB, is a
temporary file, and calls the app once the body is complete. For a model-sized
update that is an extra copy of every byte (socket -> bytes -> page cache) and,
at P = 10M and N = 8, about a third of the server's CPU time in a round
(benchmarks/results.md). Here a body of known length, from ``SLOT_BODIES_FROM``
bytes up to the largest update the app accepts, is received with ``recv_into``
into one array, which the app reads in place. Such bodies live in memory, so
only ``slots`` of them are received at once; the other connections are not read
until a slot frees (their clients wait in ``send``: TCP's own back-pressure),
which bounds the server's memory whatever the number of clients. A body kept
waiting while no slot has freed for ``patience`` seconds is received the usual
way, into waitress's buffer, so an upload that stalls while holding a slot
delays the others by that much at most.

Bodies smaller than that, from ``OWN_ARRAY_BODIES_FROM`` bytes up to what waitress
keeps in memory anyway (its ``inbuf_overflow``), are received the same way but
each into an array of its own, with no slot to wait for (``OwnArrays``): waitress
would append them piece by piece to an in-memory buffer and the app copy them out
again, which at N = 1,000 and P = 100,000 (400 kB updates) was 28% of the
server's time (benchmarks/load.md).
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from waitress.buffers import OverflowableBuffer
from waitress.receiver import FixedStreamReceiver

from fl_kubeflow.server.buffer_file import BufferFile

# Smaller bodies are cheap to buffer the usual way (waitress keeps them in memory).
SLOT_BODIES_FROM = 1 << 20
# Below this a body is a few socket reads at most: waitress's buffer costs nothing.
OWN_ARRAY_BODIES_FROM = 64 << 10
ARRAY_ROUNDING = 1 << 20
# References to a kept array inside ``BodyArrays.get``'s loop when nothing outside
# holds it: the list, the local variable, and getrefcount's own argument.
_ONLY_KEPT = 3


class ReceiveSlots:
    """How many large bodies may be received into memory at once, and their arrays.

    Args:
        slots: Bodies received into memory at the same time.
        patience: Seconds a body waits for a slot while none frees before it is
            received into waitress's buffer instead.
    """

    def __init__(self, slots: int, patience: float) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.patience = patience
        self._free = slots
        self._lock = threading.Lock()
        self._arrays = BodyArrays(keep=slots + 1)
        self._loops: list[Any] = []
        self._last_freed = time.monotonic()

    @property
    def free(self) -> int:
        """Slots not held by a body."""
        return self._free

    def wake_on_free(self, loop: Any) -> None:
        """Pull ``loop``'s trigger whenever a slot frees, so it reads waiting bodies."""
        self._loops.append(loop)

    def take(self, size: int) -> np.ndarray | None:
        """A ``size``-byte array holding a slot, or None when all slots are held."""
        with self._lock:
            if self._free == 0:
                return None
            self._free -= 1
        try:
            return self._arrays.get(size)
        except MemoryError:
            self.give_back()
            return None

    def give_back(self) -> None:
        """Free a slot taken by ``take`` and wake the loops to use it."""
        with self._lock:
            self._free += 1
            self._last_freed = time.monotonic()
        for loop in self._loops:
            with contextlib.suppress(OSError):  # a loop being closed has no trigger left
                loop.pull_trigger()

    def given_up(self, waiting_since: float) -> bool:
        """Whether a body waiting since then has waited ``patience`` with no slot freeing."""
        return time.monotonic() - max(waiting_since, self._last_freed) > self.patience


class OwnArrays:
    """Slots without a bound, for bodies waitress would hold in memory anyway: each
    gets an array of its own at once, so memory is what waitress's buffers took."""

    def take(self, size: int) -> np.ndarray:
        """A fresh ``size``-byte array (never None: no slot is waited for)."""
        return np.empty(size, np.uint8)

    def give_back(self) -> None:
        """Nothing to give back: the array goes when the app lets go of it."""

    def given_up(self, waiting_since: float) -> bool:
        """Never: ``take`` always gives an array."""
        return False


class BodyArrays:
    """Byte arrays for bodies, made again from kept ones that nothing holds any more.

    A fresh body-sized array is paid for in page faults every round; reusing the
    last round's pages avoids that (see recycling.py). At most ``keep`` arrays are
    kept, whatever sizes bodies come in, each rounded up to a whole MiB so bodies
    whose headers differ by a few bytes share them.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._kept: list[np.ndarray] = []
        self._lock = threading.Lock()

    def get(self, size: int) -> np.ndarray:
        """A ``size``-byte array of undefined contents: a view of a kept one if one fits."""
        capacity = -(-size // ARRAY_ROUNDING) * ARRAY_ROUNDING
        with self._lock:
            unheld = None
            # Not enumerate(): its reused result tuple would hold one more reference.
            for index in range(len(self._kept)):
                array = self._kept[index]
                if sys.getrefcount(array) != _ONLY_KEPT:
                    continue
                if len(array) >= size:
                    return array[:size]
                unheld = index
            array = np.empty(capacity, np.uint8)
            if len(self._kept) < self.keep:
                self._kept.append(array)
            elif unheld is not None:  # too small for bodies now: make room
                self._kept[unheld] = array
            return array[:size]


class SlotBody:
    """A request body of known length, received into a slot's array.

    Until a slot is free it keeps what arrived with the headers; if it gives up
    waiting it becomes waitress's own receiver (a spooling buffer). Has the
    receiver interface waitress's parser and channel use.
    """

    error = None

    def __init__(self, length: int, slots: ReceiveSlots | OwnArrays, inbuf_overflow: int) -> None:
        self.length = length
        self.completed = False
        self._slots = slots
        self._inbuf_overflow = inbuf_overflow
        self._got = 0
        self._early = bytearray()
        self._spool: FixedStreamReceiver | None = None
        self._waiting_since = time.monotonic()
        self.array: np.ndarray | None = None
        self._held = False
        self.ready()  # a slot now if one is free

    def __len__(self) -> int:
        if self._spool is not None:
            return len(self._spool)
        return self._got

    @property
    def direct(self) -> bool:
        """Whether the rest of the body goes straight into the array."""
        return self.array is not None and not self.completed

    def ready(self) -> bool:
        """Whether the channel may read more of this body: it has a slot or gave up."""
        if self.array is not None or self._spool is not None or self.completed:
            return True
        self.array = self._slots.take(self.length)
        if self.array is not None:
            self._held = True
            self.array[: len(self._early)] = np.frombuffer(self._early, np.uint8)
            self._early = bytearray()
            return True
        if self._slots.given_up(self._waiting_since):
            self._spool = FixedStreamReceiver(self.length, OverflowableBuffer(self._inbuf_overflow))
            self._spool.received(bytes(self._early))
            self._early = bytearray()
            return True
        return False

    def received(self, data: bytes) -> int:
        """Take bytes the usual way (those read with the headers); return how many."""
        if self._spool is not None:
            used = self._spool.received(data)
            self.completed = self._spool.completed
            return used
        used = min(len(data), self.length - self._got)
        if self.array is not None:
            self.array[self._got : self._got + used] = np.frombuffer(data, np.uint8, used)
        else:
            self._early += data[:used]
        self._advance(used)
        return used

    def receive_into(self, sock: Any) -> int:
        """Read what the socket has of the body's rest into the array; 0 at EOF."""
        count = sock.recv_into(memoryview(self.array)[self._got :])
        self._advance(count)
        return count

    def _advance(self, count: int) -> None:
        self._got += count
        if self._got >= self.length:
            self.completed = True

    def getfile(self) -> Any:
        """The body for the app: ``wsgi.input``."""
        if self._spool is not None:
            return self._spool.getfile()
        if self.array is None:  # completed while waiting: only ever a tiny body
            return io.BytesIO(bytes(self._early))
        return ReceivedBody(self.array, release=self.release)

    def getbuf(self) -> Any:
        """What waitress closes when the request is done."""
        if self._spool is not None:
            return self._spool.getbuf()
        return self

    def close(self) -> None:
        """Free the slot (the array lives on while the app still holds it)."""
        if self._held:
            self._held = False
            self._slots.give_back()

    def release(self) -> None:
        """Free the slot and let go of the array, before waitress is done with the
        request: the app has used the body. Until then the array could not be reused
        for the next body, and a request that goes on waiting would keep a body's
        worth of memory each."""
        self.close()
        self.array = None


class ReceivedBody(BufferFile):
    """``wsgi.input`` over a body received into an array; ``array`` is the body itself."""

    def __init__(self, array: np.ndarray, release: Callable[[], None] | None = None) -> None:
        super().__init__(array, views=False)
        self.array: np.ndarray | None = array
        self._release = release

    def release_slot(self) -> None:
        """Free the body's receive slot now, before waitress finishes the request: for a
        request that goes on waiting once its body was used (a secure round's masked
        input), so other bodies are not kept waiting for the slot meanwhile."""
        if self._release is not None:
            self._release()

    def take_array(self) -> np.ndarray:
        """The body, no longer referenced from here: once the taker lets go of it,
        its memory can hold the next body even while waitress still holds the request."""
        array = self.array
        if array is None:
            raise ValueError("the body was taken already")
        self.array = None
        self._view = memoryview(b"")
        return array
