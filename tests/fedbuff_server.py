"""An asynchronous (``--mode async``) server for tests, in this process.

``serve_in_thread`` runs ``serve`` on a loopback port in a thread of the test, for
ServerConfig fields given as JSON-ready values plus "async": AsyncParams options. (A
server a test kills and starts again is the real command: tests/test_fedbuff_resume.py.)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fl_kubeflow.async_params import AsyncParams
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.serve import ServeResult, serve

PATH_FIELDS = ("output_dir", "checkpoint_dir", "initial_weights")


def config_from_spec(spec: dict[str, Any]) -> ServerConfig:
    """A ServerConfig on loopback from JSON-ready fields (paths as strings)."""
    fields = dict(spec)
    options = fields.pop("async")
    for name in PATH_FIELDS:
        if fields.get(name) is not None:
            fields[name] = Path(fields[name])
    if fields.get("client_ids") is not None:
        fields["client_ids"] = tuple(fields["client_ids"])
    fields.setdefault("port", 0)
    return ServerConfig(host="127.0.0.1", asynchronous=AsyncParams.from_options(options), **fields)


@dataclass
class ThreadServer:
    """``serve`` running in a thread: its port, then its result."""

    thread: threading.Thread
    port: int
    result: list[ServeResult] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float) -> ServeResult:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the server did not end within {timeout}s"
        if self.errors:
            raise self.errors[0]
        return self.result[0]


def serve_in_thread(spec: dict[str, Any], ready_timeout: float = 30.0) -> ThreadServer:
    """Start ``serve`` for ``spec`` in a daemon thread; return once it listens."""
    listening = threading.Event()
    ports: list[int] = []
    result: list[ServeResult] = []
    errors: list[BaseException] = []

    def on_listening(port: int) -> None:
        ports.append(port)
        listening.set()

    def target() -> None:
        try:
            result.append(serve(config_from_spec(spec), on_listening=on_listening))
        except BaseException as exc:  # reported by wait() or below
            errors.append(exc)
            listening.set()

    thread = threading.Thread(target=target, daemon=True, name="fedbuff-server")
    thread.start()
    assert listening.wait(ready_timeout), f"server not listening within {ready_timeout}s"
    if errors:
        raise errors[0]
    return ThreadServer(thread, ports[0], result, errors)
