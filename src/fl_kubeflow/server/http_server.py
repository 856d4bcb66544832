"""The WSGI server under the Flask app: waitress, or cheroot when TLS is on.

waitress has no TLS support; cheroot (CherryPy's server) terminates TLS itself
with the standard library's ssl module, so a federation can be encrypted without
a sidecar. Both are sized from the federation: every client may hold a long-poll.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fl_kubeflow.server.body_slots import ReceiveSlots, slot_channel_class
from fl_kubeflow.server.config import ServerConfig

log = logging.getLogger("fl_kubeflow.server")


@dataclass
class RunningServer:
    """A server serving on a background thread."""

    port: int
    scheme: str
    close: Callable[[], None]
    receive_slots: ReceiveSlots | None = None  # None with TLS (cheroot) or no slots


def start_http_server(app: Any, config: ServerConfig) -> RunningServer:
    """Bind, start serving on a daemon thread, and return the bound port."""
    if config.tls_cert is not None:
        return _start_cheroot(app, config)
    return _start_waitress(app, config)


def _start_waitress(app: Any, config: ServerConfig) -> RunningServer:
    from waitress import create_server

    options: dict[str, Any] = dict(
        threads=config.server_threads,
        # Each client keeps a connection (often a long-poll) open: waitress's default
        # limit of 100 connections would stall a federation of 200. (Per loop.)
        connection_limit=config.connection_limit,
        # Bodies beyond the receive slots are spooled to disk, so this costs no memory.
        max_request_body_size=_server_body_limit(config),
        channel_timeout=max(120, int(config.poll_timeout) + 30),
        # Our headers are small; a 64 KiB cap refuses header floods early.
        max_request_header_size=64 * 1024,
        # Bytes per socket read: waitress's 8 KiB default makes a 40 MB update 5,000
        # turns of its single I/O thread's loop; 256 KiB makes it 160.
        recv_bytes=256 * 1024,
        ident="fl-kubeflow",
    )
    first = create_server(app, host=config.host, port=config.port, **options)
    loops = [first]
    # More loops on the same listening socket, each with its own I/O thread: whichever
    # is free accepts a new connection (the others get EAGAIN, which waitress ignores),
    # so clients' bodies are received on several cores. One pool of worker threads
    # serves them all, sized for the whole federation. Each loop has its own file
    # descriptor for the socket, so closing one loop leaves the others a valid one.
    for _ in range(config.socket_loops - 1):
        loops.append(
            create_server(
                app,
                map={},
                _dispatcher=first.task_dispatcher,  # type: ignore[union-attr]
                sockets=[first.socket.dup()],  # type: ignore[union-attr]
                **options,
            )
        )
    # Updates are received straight into memory, a few at a time (server/body_slots.py).
    slots = None
    if config.receive_slots:
        slots = ReceiveSlots(config.receive_slots, patience=config.slot_patience)
        channel_class = slot_channel_class(slots, largest=config.max_update_bytes)
        for loop in loops:
            loop.channel_class = channel_class  # type: ignore[union-attr]
            slots.wake_on_free(loop)
    closing = threading.Event()
    for number, loop in enumerate(loops):
        threading.Thread(
            target=_run_loop, args=(loop, closing), name=f"waitress-io-{number}", daemon=True
        ).start()

    def close() -> None:
        closing.set()
        for loop in loops:
            loop.close()

    return RunningServer(int(first.effective_port), "http", close, slots)  # type: ignore[union-attr]


def _server_body_limit(config: ServerConfig) -> int:
    """The WSGI server's own body limit: well above the app's (max_update_bytes).

    So the app answers oversize bodies with a JSON reason (413 too_large); only
    absurd bodies meet the server's plain-text 413.
    """
    return 2 * config.max_update_bytes + 16 * 1024 * 1024


def _run_loop(loop: Any, closing: threading.Event) -> None:
    # close() comes from another thread and may close a descriptor the loop is
    # selecting on: the EBADF that follows is the loop's end, not an error.
    try:
        loop.run()
    except OSError:
        if not closing.is_set():
            raise


def _start_cheroot(app: Any, config: ServerConfig) -> RunningServer:
    from cheroot import wsgi
    from cheroot.ssl.builtin import BuiltinSSLAdapter

    server = wsgi.Server(
        (config.host, config.port),
        app,
        numthreads=config.server_threads,
        max=config.server_threads,
        request_queue_size=config.connection_limit,
        timeout=max(120, int(config.poll_timeout) + 30),
        server_name="fl-kubeflow",
    )
    server.max_request_header_size = 64 * 1024
    server.max_request_body_size = _server_body_limit(config)
    adapter = BuiltinSSLAdapter(str(config.tls_cert), str(config.tls_key))
    adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
    server.ssl_adapter = adapter
    server.prepare()
    port = int(server.bind_addr[1])
    threading.Thread(target=server.serve, name="cheroot", daemon=True).start()
    return RunningServer(port, "https", server.stop)
