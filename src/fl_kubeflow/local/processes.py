"""Child processes: own session, output to a file, stopped for sure; the server's start.

Used by the local runner, and by the tests and benchmarks, which start the same
``fl-kubeflow server`` on loopback and wait for its ready file the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

STOP_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 60.0
# How often the ready file is looked for: a stat call, cheap beside a server's start-up.
READY_POLL_S = 0.02
LOOPBACK = "127.0.0.1"


@dataclass
class Child:
    """One child process and the file its output goes to."""

    name: str
    proc: subprocess.Popen
    log_path: Path

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def last_words(self, lines: int = 6) -> str:
        """The end of its log: where a failing process says why."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        tail = [line for line in text.splitlines() if line.strip()][-lines:]
        return "\n".join(tail)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not go within STOP_TIMEOUT_S."""
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)


def spawn(
    name: str,
    command: Sequence[str],
    log_path: Path,
    env: Mapping[str, str | None] | None = None,
    *,
    append_log: bool = False,
    new_session: bool = True,
) -> Child:
    """Run ``command`` with its output to ``log_path`` and no stdin.

    ``env`` is laid over this process's environment; a None value removes that variable.
    A new session keeps a terminal's Ctrl-C away from the child, so its parent alone
    decides how it stops; ``new_session=False`` lets the child go down with the parent's
    process group instead (tests). ``append_log`` keeps what an earlier child wrote there.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    merged = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    child_env = {key: value for key, value in merged.items() if value is not None}
    with log_path.open("ab" if append_log else "wb") as log:
        proc = subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env,
            start_new_session=new_session,
        )
    return Child(name, proc, log_path)


def fl_command(args: Sequence[str], prefix: Sequence[str] = ()) -> list[str]:
    """``python -m fl_kubeflow ARGS``, run under ``prefix`` (e.g. a profiler) if given."""
    return [*prefix, sys.executable, "-m", "fl_kubeflow", *args]


def start(
    name: str, args: Sequence[str], log_path: Path, env: Mapping[str, str | None] | None = None
) -> Child:
    """Run ``python -m fl_kubeflow ARGS`` with output to ``log_path`` (see ``spawn``)."""
    return spawn(name, fl_command(args), log_path, env)


class ServerStartError(RuntimeError):
    """The server exited before it listened, or did not listen in time (it is then stopped)."""

    def __init__(self, child: Child, message: str, *, exited: bool) -> None:
        super().__init__(message)
        self.child = child
        # True: it exited on its own (its log says why); False: it did not listen in time.
        self.exited = exited


def start_server(
    options: Sequence[str],
    ready_file: Path,
    log_path: Path,
    env: Mapping[str, str | None] | None = None,
    *,
    port: int = 0,
    log_level: str | None = None,
    prefix: Sequence[str] = (),
    ready_timeout: float = READY_TIMEOUT_S,
    append_log: bool = False,
    new_session: bool = True,
) -> tuple[Child, int]:
    """Start ``fl-kubeflow server`` on loopback; return it and its port once it listens.

    ``options`` are its options after ``--host``, ``--port`` and ``--ready-file`` (port 0:
    the kernel picks a free one, which the server writes to ``ready_file``). ``log_level``
    is the global ``--log-level`` (None: the CLI's default); ``prefix``, ``env``,
    ``append_log`` and ``new_session`` are as for ``spawn``.

    Raises:
        ServerStartError: the server exited first, or did not listen within
            ``ready_timeout`` seconds (then it is stopped).
    """
    # A file left by an earlier run must not hand its old port to the clients.
    ready_file.unlink(missing_ok=True)
    args = [
        *(["--log-level", log_level] if log_level is not None else []),
        "server",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--ready-file",
        str(ready_file),
        *options,
    ]
    child = spawn(
        "server",
        fl_command(args, prefix),
        log_path,
        env,
        append_log=append_log,
        new_session=new_session,
    )
    try:
        return child, _wait_listening(child, ready_file, ready_timeout)
    except BaseException:
        child.stop()  # no server outlives a failed start, whatever interrupted it
        raise


def _wait_listening(child: Child, ready_file: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while not ready_file.exists():
        if child.returncode is not None:
            message = f"the server exited at start:\n{child.last_words()}"
            raise ServerStartError(child, message, exited=True)
        if time.monotonic() > deadline:
            message = f"the server did not listen within {timeout:g}s"
            raise ServerStartError(child, message, exited=False)
        time.sleep(READY_POLL_S)
    return int(json.loads(ready_file.read_text())["port"])


def stop_all(children: list[Child]) -> None:
    for child in children:
        if child.proc.poll() is None:
            child.proc.terminate()
    for child in children:
        child.stop()
