"""A loopback http server over a folder: the ``http(s)://`` data source in tests."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # client hung up: fine
        pass


@contextmanager
def serving(server: http.server.HTTPServer, timeout: float = 10.0) -> Iterator[str]:
    """Run ``server`` in a thread; yield its base URL; shut it down after."""
    # serve_forever notices shutdown() once per poll interval (0.5 s by default).
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=timeout)


@contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (a free port); yield its base URL, stop after."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    with serving(_QuietServer(("127.0.0.1", 0), handler)) as url:
        yield url
