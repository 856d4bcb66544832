"""The WSGI server under the Flask app: waitress, or cheroot when TLS is on.

waitress has no TLS support; cheroot (CherryPy's server) terminates TLS itself
with the standard library's ssl module, so a federation can be encrypted without
a sidecar. Both are sized from the federation: every client may hold a long-poll.
Both check each request's head before its body (server/header_check.py) and report
every connection to one ConnectionGuard (deadlines, the strangers' cap). waitress's
socket loops run on epoll (server/event_loop.py), so a loop's turn costs what changed,
not every connection it holds.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fl_kubeflow.server.body_slots import ReceiveSlots
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.connection_guard import ConnectionGuard
from fl_kubeflow.server.federation import Federation
from fl_kubeflow.server.header_check import MAX_JSON_BYTES, HeadCheck

if TYPE_CHECKING:
    from fl_kubeflow.server.event_loop import EpollLoop
    from fl_kubeflow.server.parking import Parker

log = logging.getLogger("fl_kubeflow.server")

# File descriptors kept for what is not a connection: the listening sockets, the
# loops' triggers, spool files, the checkpoint and output files, the registry.
FD_RESERVE = 64
# Seconds close() waits for each woken socket loop to end before closing its sockets.
LOOP_END_WAIT = 5.0
# Seconds between two of waitress's "Task queue depth" warnings (server/throttled_log.py).
QUEUE_WARNING_EVERY = 10.0


@dataclass
class RunningServer:
    """A server serving on a background thread."""

    port: int
    scheme: str
    close: Callable[[], None]
    receive_slots: ReceiveSlots | None = None  # None with TLS (cheroot) or no slots
    parker: Parker | None = None  # None with TLS (cheroot) or no federation
    event_loops: list[EpollLoop] = field(default_factory=list)  # waitress's, on epoll


def start_http_server(
    app: Any,
    config: ServerConfig,
    head_check: HeadCheck | None = None,
    count: Callable[[str], None] | None = None,
    on_failure: Callable[[str], None] | None = None,
    federation: Federation | None = None,
) -> RunningServer:
    """Bind, start serving on daemon threads, and return the bound port.

    Args:
        app: The WSGI app.
        config: The run's configuration (sizes, timeouts, TLS).
        head_check: Called with each request's method, path and headers before its
            body is read; a refusal it returns is the answer. None: every head passes
            (a bare WSGI app's server, in tests), and every connection is a stranger's.
        count: Called with a reason for each connection the guard closes.
        on_failure: Called with the reason if a thread that serves sockets dies before
            ``close`` (the process would otherwise stay up serving nobody); the
            server's ``serve`` fails the run with it.
        federation: The run whose model long-polls waitress parks without a thread
            (server/parking.py); None: each waits in a worker thread, as with TLS.
    """
    head_check = head_check or _no_check
    guard = ConnectionGuard(config.head_timeout, config.max_pending_connections, count or _no_count)
    guard.start()
    died = on_failure or _log_only
    if config.tls_cert is not None:
        running = _start_cheroot(app, config, head_check, guard, died)
    else:
        running = _start_waitress(app, config, head_check, guard, died, federation)
    close = running.close

    def close_all() -> None:
        guard.stop()
        close()

    running.close = close_all
    return running


def _no_check(method: str, path: str, headers: Mapping[str, str]) -> None:
    return None


def _no_count(reason: str) -> None:
    return None


def _log_only(reason: str) -> None:
    log.error("%s", reason)


def connection_capacity(config: ServerConfig) -> int:
    """config.connection_limit, or fewer if the process may not open that many files.

    The soft limit on open files is raised to the hard one first: a server holding
    thousands of connections must not fail to accept one, or to write its outputs.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = config.connection_limit + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return config.connection_limit
    capacity = max(1, soft - FD_RESERVE)
    log.warning(
        "open-file limit %d allows %d connections, not %d", soft, capacity, config.connection_limit
    )
    return capacity


def _start_waitress(
    app: Any,
    config: ServerConfig,
    head_check: HeadCheck,
    guard: ConnectionGuard,
    on_failure: Callable[[str], None],
    federation: Federation | None,
) -> RunningServer:
    from waitress import create_server

    from fl_kubeflow.server.event_loop import InterestMap, attach_loop
    from fl_kubeflow.server.parking import Parker
    from fl_kubeflow.server.throttled_log import ThrottledWarnings
    from fl_kubeflow.server.waitress_channel import guarded_channel_class

    options: dict[str, Any] = dict(
        threads=config.server_threads,
        # Each client keeps a connection (often a long-poll) open: waitress's default
        # limit of 100 connections would stall a federation of 200. (Per loop; the
        # strangers among them are capped by the guard.)
        connection_limit=connection_capacity(config),
        # Bodies beyond the receive slots are spooled to disk, so this costs no memory.
        max_request_body_size=_server_body_limit(config),
        # Idle clients' connections; strangers' are the guard's (head_timeout).
        channel_timeout=config.idle_timeout,
        # Our headers are small; a 64 KiB cap refuses header floods early.
        max_request_header_size=64 * 1024,
        # Bytes per socket read: waitress's 8 KiB default makes a 40 MB update 5,000
        # turns of its single I/O thread's loop; 256 KiB makes it 160.
        recv_bytes=256 * 1024,
        # Where epoll is missing and waitress's own loop runs: poll(), not select():
        # select() takes no descriptor of 1024 or above, and a server of a thousand
        # clients holds more (its loops then died of ValueError).
        asyncore_use_poll=True,
        ident="fl-kubeflow",
    )
    # Each loop's sockets in a map that tells its epoll loop what changed
    # (server/event_loop.py): interest kept between turns, not asked of every socket.
    first = create_server(app, map=InterestMap(), host=config.host, port=config.port, **options)
    dispatcher: Any = first.task_dispatcher  # type: ignore[union-attr]
    dispatcher.queue_logger = ThrottledWarnings(dispatcher.queue_logger, QUEUE_WARNING_EVERY)
    parker = None
    if federation is not None:
        # In front of the worker threads: model long-polls wait without one.
        parker = Parker(federation, dispatcher, config.poll_timeout)
        dispatcher = first.task_dispatcher = parker  # type: ignore[union-attr]
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
                map=InterestMap(),
                _dispatcher=dispatcher,
                sockets=[first.socket.dup()],  # type: ignore[union-attr]
                **options,
            )
        )
    # Updates are received straight into memory, a few at a time (server/body_slots.py).
    slots = None
    if config.receive_slots:
        slots = ReceiveSlots(config.receive_slots, patience=config.slot_patience)
        for loop in loops:
            slots.wake_on_free(loop)
    channel_class = guarded_channel_class(head_check, guard, slots, config.max_update_bytes, parker)
    for loop in loops:
        loop.channel_class = channel_class  # type: ignore[union-attr]
    event_loops = [e for e in (attach_loop(loop) for loop in loops) if e is not None]
    closing = threading.Event()
    threads = []
    for number, loop in enumerate(loops):
        name = f"waitress-io-{number}"
        thread = threading.Thread(
            target=_run_loop, args=(loop, closing, name, on_failure), name=name, daemon=True
        )
        thread.start()
        threads.append(thread)

    def close() -> None:
        closing.set()
        if parker is not None:
            parker.stop()
        if event_loops:
            # An epoll loop sees ``closing`` when woken and ends; only then are its
            # sockets closed (a closed trigger's wake-up would be lost with it).
            for loop in loops:
                with contextlib.suppress(OSError):
                    loop.pull_trigger()
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join(LOOP_END_WAIT)
        for loop in loops:
            loop.close()  # waitress's own loop ends on its closed sockets

    port = int(first.effective_port)  # type: ignore[union-attr]
    return RunningServer(port, "http", close, slots, parker, event_loops)


def _server_body_limit(config: ServerConfig) -> int:
    """The WSGI server's own limit, met only by chunked bodies (no Content-Length).

    A declared length over the limit is refused from the headers (header_check); a
    chunked body is counted as it arrives, chunk framing included, hence the slack;
    the app refuses one over max_update_bytes by its own count. Both answer 413
    too_large in JSON.
    """
    return config.max_update_bytes + MAX_JSON_BYTES


def _run_loop(
    loop: Any, closing: threading.Event, name: str, on_failure: Callable[[str], None]
) -> None:
    """Run one socket loop; if it ends before ``close``, say so through ``on_failure``.

    close() comes from another thread and may close a descriptor the loop is polling:
    the error that follows is the loop's end, not a failure.
    """
    from fl_kubeflow.server.event_loop import run_loop

    try:
        run_loop(loop, closing)
    except BaseException as exc:  # any end of a loop is reported
        if closing.is_set():
            return
        log.exception("%s died", name)
        on_failure(f"the HTTP server's socket loop {name} died: {type(exc).__name__}: {exc}")
        return
    if not closing.is_set():
        on_failure(f"the HTTP server's socket loop {name} stopped")


def _start_cheroot(
    app: Any,
    config: ServerConfig,
    head_check: HeadCheck,
    guard: ConnectionGuard,
    on_failure: Callable[[str], None],
) -> RunningServer:
    from cheroot import wsgi

    from fl_kubeflow.server.cheroot_guard import LateHandshakeAdapter, guarded_connection_class

    capacity = connection_capacity(config)
    # A worker thread per connection being read: the clients' share, and one for each
    # stranger the guard lets in, so strangers never hold the clients' threads.
    threads = config.server_threads + config.max_pending_connections
    server = wsgi.Server(
        (config.host, config.port),
        app,
        numthreads=threads,
        max=threads,
        request_queue_size=capacity,
        timeout=config.idle_timeout,
        server_name="fl-kubeflow",
    )
    server.ConnectionClass = guarded_connection_class(head_check, guard)
    server.keep_alive_conn_limit = capacity
    server.max_request_header_size = 64 * 1024
    # None of cheroot's own: it would answer a declared length over it in plain text
    # before the head check runs. The check refuses those; the app, chunked ones.
    server.max_request_body_size = 0
    adapter = LateHandshakeAdapter(str(config.tls_cert), str(config.tls_key))
    adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
    server.ssl_adapter = adapter
    server.prepare()
    port = int(server.bind_addr[1])
    stopping = threading.Event()

    def serve() -> None:
        try:
            server.serve()
        except BaseException as exc:  # any end of serving is reported
            if not stopping.is_set():
                log.exception("cheroot died")
                on_failure(f"the HTTPS server died: {type(exc).__name__}: {exc}")
            return
        if not stopping.is_set():
            on_failure("the HTTPS server stopped")

    def stop() -> None:
        stopping.set()
        server.stop()

    threading.Thread(target=serve, name="cheroot", daemon=True).start()
    return RunningServer(port, "https", stop)
