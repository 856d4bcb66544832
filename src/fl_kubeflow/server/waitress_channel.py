"""waitress's connection, parser and error response, with the head check and the guard.

Every connection is a ``GuardedChannel``: it reports to the ``ConnectionGuard``
(deadlines, the strangers' cap) and its parser calls the head check as soon as a
request's headers are parsed, before any of the body is read. A refused request
becomes waitress's own kind of error, answered with the refusal's JSON body and
``Connection: close``; the body is never read. Bodies of known length that the app
may accept go into receive slots (server/body_slots.py), others into waitress's
buffer as usual; so do bodies of up to waitress's in-memory limit, each into an
array of its own.
"""

from __future__ import annotations

import functools
import json
import time
from http import HTTPStatus
from typing import Any

from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.utilities import Error, RequestEntityTooLarge

from fl_kubeflow.server.body_slots import (
    OWN_ARRAY_BODIES_FROM,
    SLOT_BODIES_FROM,
    OwnArrays,
    ReceiveSlots,
    SlotBody,
)
from fl_kubeflow.server.connection_guard import ConnectionGuard
from fl_kubeflow.server.errors import RequestError, TooLarge
from fl_kubeflow.server.event_loop import mark_changed
from fl_kubeflow.server.header_check import HeadCheck, trusted
from fl_kubeflow.server.parking import ParkedTask, Parker


class JsonRefusal(Error):
    """A refusal as waitress answers its own errors: status, JSON body, connection closed."""

    def __init__(self, refusal: RequestError) -> None:
        super().__init__(refusal.message)
        self.code = refusal.status
        self.refusal = refusal

    def to_response(self, ident: str | None = None) -> tuple[str, list[tuple[str, str]], bytes]:
        status = f"{self.refusal.status} {HTTPStatus(self.refusal.status).phrase}"
        headers = [("Content-Type", "application/json")]
        return status, headers, json.dumps(self.refusal.body()).encode()


def guarded_channel_class(
    head_check: HeadCheck,
    guard: ConnectionGuard,
    slots: ReceiveSlots | None,
    largest: int,
    parker: Parker | None = None,
) -> type[HTTPChannel]:
    """A waitress channel class that checks heads, reports to ``guard``, and uses ``slots``.

    Args:
        head_check: The request-head check (``header_check.check_request_head``, bound).
        guard: Deadlines and the strangers' cap.
        slots: Receive slots for bodies from ``SLOT_BODIES_FROM`` bytes up to ``largest``
            (smaller ones from ``OWN_ARRAY_BODIES_FROM`` up to waitress's in-memory limit
            get arrays of their own); None spools every body as waitress does.
        largest: The largest body the app accepts (max_update_bytes): bodies above go
            to waitress's buffer, memory being for bodies that can be accepted.
        parker: Where model long-polls wait without a thread (server/parking.py);
            None: in a worker thread.
    """

    own_arrays = OwnArrays()

    class GuardedParser(HTTPRequestParser):
        refusal: RequestError | None = None

        def __init__(self, adj: Any, channel: HTTPChannel) -> None:
            super().__init__(adj)
            self.channel = channel

        def parse_header(self, header_plus: bytes) -> None:
            try:
                super().parse_header(header_plus)
            except ValueError as exc:
                # waitress int()s a Content-Length of any number of digits; past
                # Python's 4300-digit limit that raised on the I/O thread, which logged
                # a traceback per connection: a 400 like any other malformed length.
                raise ParsingError("Content-Length is invalid") from exc
            headers = {k.lower().replace("_", "-"): v for k, v in self.headers.items()}
            self.refusal = head_check(self.command, self.path, headers)
            guard.head_done(self.channel, trusted(self.path, self.refusal))
            if self.refusal is not None:
                self.body_rcv = None  # not one byte of the body is read
                self.expect_continue = False
                return
            length, overflow = self.content_length, self.adj.inbuf_overflow
            if slots is None or self.chunked or length > largest:
                return
            if length >= SLOT_BODIES_FROM:
                self.body_rcv = SlotBody(length, slots, overflow)
            elif OWN_ARRAY_BODIES_FROM <= length <= overflow:
                self.body_rcv = SlotBody(length, own_arrays, overflow)

        def received(self, data: bytes) -> int:
            consumed = super().received(data)
            if self.refusal is not None:
                self.error = JsonRefusal(self.refusal)
                self.completed = True
                return len(data)  # what came with the headers is body: dropped
            if isinstance(self.error, RequestEntityTooLarge):  # a chunked body too long
                self.error = JsonRefusal(TooLarge(f"body exceeds max_update_bytes={largest}"))
            return consumed

    class GuardedChannel(HTTPChannel):
        task_class = ParkedTask
        # Whatever changes readable()/writable() off the loop's thread marks the
        # channel (server/event_loop.py); the loop asks nothing else between rescans.
        marks_interest_changes = True

        def __init__(self, server: Any, sock: Any, addr: Any, adj: Any, map: Any = None) -> None:
            super().__init__(server, sock, addr, adj, map=map)
            self.parser_class = functools.partial(GuardedParser, channel=self)
            guard.opened(self, self._shed)

        def _shed(self) -> None:
            # From the guard's thread: the channel's own loop closes it when woken.
            self.will_close = True
            mark_changed(self)
            self.server.pull_trigger()  # waitress's own loop (no epoll) needs it

        def write_soon(self, data: Any) -> int:
            # A worker queued output (the loop must write) or flushed it.
            try:
                return super().write_soon(data)
            finally:
                mark_changed(self)

        def cancel(self) -> None:
            super().cancel()
            mark_changed(self)

        def polled_each_turn(self) -> bool:
            # A body waiting for a receive slot: the slot frees on a worker's thread,
            # or patience runs out, with nothing marking this channel.
            body = self._slot_body()
            return body is not None and not body.ready()

        def received(self, data: bytes) -> bool:
            if data and self.request is None:
                guard.head_begun(self)
            return super().received(data)

        def service(self) -> None:
            try:
                super().service()
            finally:
                # Requests done (readable again), output queued, or closing.
                mark_changed(self)
            guard.served(self)

        def _slot_body(self) -> SlotBody | None:
            body = getattr(self.request, "body_rcv", None)
            return body if isinstance(body, SlotBody) and not body.completed else None

        def readable(self) -> bool:
            if not super().readable():
                return False
            body = self._slot_body()
            return body is None or body.ready()

        def handle_read(self) -> None:
            body = self._slot_body()
            if body is None or not body.direct:
                super().handle_read()
                return
            try:
                count = body.receive_into(self.socket)
            except BlockingIOError:
                return
            except OSError:
                if self.adj.log_socket_errors:
                    self.logger.exception("Socket error")
                self.handle_close()
                return
            if not count:  # the client went away mid-body
                self.handle_close()
                self.connected = False
                return
            self.last_activity = time.time()
            if body.completed:
                self._hand_over()

        def _hand_over(self) -> None:
            # What waitress's received() does with a completed request.
            with self.requests_lock:
                request = self.request
                if self.will_close or self.close_when_flushed or request is None:
                    return
                request.body_bytes_received = request.content_length
                request.completed = True
                self.sent_continue = False
                self.requests.append(request)
                if len(self.requests) == 1:
                    self.server.add_task(self)
                self.request = None

        def handle_close(self) -> None:
            guard.closed(self)
            if parker is not None:
                parker.forget(self)
            # A body cut off mid-way would otherwise keep its slot.
            request = self.request
            if request is not None and isinstance(request.body_rcv, SlotBody):
                request.body_rcv.close()
            super().handle_close()

    return GuardedChannel
