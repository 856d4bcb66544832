"""cheroot's connection and request, with the head check, the guard, and a late TLS handshake.

cheroot accepts every connection on one thread and, with TLS, does the handshake
there too: one silent TCP connection would hold up every accept for the whole socket
timeout. Here the handshake is left to the first read, on the worker thread serving
the connection, where the guard's head deadline (from the accept) bounds it. Each
connection reports to the ``ConnectionGuard``; a request whose head the check refuses
is answered with the refusal's JSON body and ``Connection: close`` before its body is
read. cheroot gives each connection it reads a worker thread, so the server is sized
for the clients plus the strangers the guard holds at most.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from http import HTTPStatus
from typing import Any

from cheroot.server import HTTPConnection, HTTPRequest
from cheroot.ssl.builtin import BuiltinSSLAdapter

from fl_kubeflow.server.connection_guard import ConnectionGuard
from fl_kubeflow.server.errors import RequestError
from fl_kubeflow.server.header_check import HeadCheck, trusted

TLS_ENVIRON = {"wsgi.url_scheme": "https", "HTTPS": "on"}
# After a refusal, how long what the client still sends is read and dropped before the
# connection closes. A TLS client cut off mid-body sees a broken connection, not the
# refusal (urllib3 reads the answer after a broken pipe, not after a TLS error).
LINGER_SECONDS = 2.0
DRAIN_PIECE = 1 << 16


class LateHandshakeAdapter(BuiltinSSLAdapter):
    """TLS whose handshake happens on the connection's first read, not in the acceptor."""

    def wrap(self, sock: socket.socket) -> tuple[ssl.SSLSocket, dict[str, str]]:
        wrapped = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        # The app reads nothing of the cipher; these are what WSGI needs.
        return wrapped, dict(TLS_ENVIRON)


def guarded_connection_class(head_check: HeadCheck, guard: ConnectionGuard) -> type[HTTPConnection]:
    """A cheroot connection class whose requests are checked on their heads.

    Args:
        head_check: The request-head check (``header_check.check_request_head``, bound).
        guard: Deadlines and the strangers' cap.
    """

    class GuardedRequest(HTTPRequest):
        def parse_request(self) -> None:
            guard.head_begun(self.conn)
            try:
                super().parse_request()
            except OSError:
                # A handshake or head cut short (by the guard, or the peer): just close,
                # without the line per connection cheroot would log for it.
                self.ready = False
                self.close_connection = True

        def read_request_headers(self) -> bool:
            if not super().read_request_headers():
                return False
            path = self.path.decode("latin-1")
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.inheaders.items()
            }
            refusal = head_check(self.method.decode("latin-1"), path, headers)
            guard.head_done(self.conn, trusted(path, refusal))
            if refusal is None:
                return True
            self._refuse(refusal)
            return False

        def _refuse(self, refusal: RequestError) -> None:
            body = json.dumps(refusal.body()).encode()
            head = (
                f"{self.server.protocol} {refusal.status} {HTTPStatus(refusal.status).phrase}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            self.close_connection = True
            self.conn.wfile.write(head.encode("latin-1") + body)
            self.conn.wfile.flush()
            _drain(self.conn.socket)

        def respond(self) -> None:
            super().respond()
            guard.served(self.conn)

    class GuardedConnection(HTTPConnection):
        RequestHandlerClass = GuardedRequest

        def __init__(self, server: Any, sock: Any, makefile: Any) -> None:
            super().__init__(server, sock, makefile)
            guard.opened(self, self._shed)

        def _shed(self) -> None:
            # The socket's own shutdown, not TLS's: whichever thread is blocked in a read
            # of it (or the selector holding it) wakes to an end of stream.
            socket.socket.shutdown(self.socket, socket.SHUT_RDWR)

        def close(self) -> None:
            guard.closed(self)
            super().close()

    return GuardedConnection


def _drain(sock: socket.socket) -> None:
    """Read and drop what arrives for up to LINGER_SECONDS, or until the peer is done."""
    deadline = time.monotonic() + LINGER_SECONDS
    with contextlib.suppress(OSError):
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            if not sock.recv(DRAIN_PIECE):
                return
