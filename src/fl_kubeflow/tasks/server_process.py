"""The server pod's federation in a child process, restarted from its checkpoint on a crash.

A stock KFP backend retries a task only when Argo calls its pod "Error" (deleted,
evicted), not when the container exits non-zero ("Failed"), and never after the
retry's ``backoff_max_duration``. So the server task does not serve in its own process:
it runs ``python -m fl_kubeflow.tasks.server_process`` (that command line is how to find
the process) and, if that process dies without an answer (killed by a signal, e.g. the
OOM killer, or an interpreter crash), starts it again; with a checkpoint the new one
resumes after the last completed round while the clients wait and rejoin. The pod, its
Service and its token stay. A federation that ends by itself, even failed (quorum lost,
a bad option, an RBAC refusal), is an answer and is never retried here.

The parent sends the ServerConfig (token included) pickled through the child's stdin,
so the token is in no command line, environment or file; the child answers in a JSON
file. The child exits when its stdin closes, i.e. when the parent is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from fl_kubeflow import files
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.serve import ServeResult
from fl_kubeflow.tasks.durations import attempt_seconds

log = logging.getLogger("fl_kubeflow.tasks.server")

MODULE = "fl_kubeflow.tasks.server_process"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EXIT_ANSWERED = 0
EXIT_RAISED = 3  # serve() raised: an answer too (the reason is in the result file)
EXIT_ORPHANED = 4  # the parent went away


class ServerProcessError(RuntimeError):
    """The server process failed in a way a restart does not cure; the message says why."""


def serve_in_child(
    config: ServerConfig,
    *,
    max_restarts: int,
    timeout: float | None = None,
) -> ServeResult:
    """Serve ``config`` in a child process; restart it after a crash, at most ``max_restarts``.

    Restarts happen only with a ``checkpoint_dir`` (without one a new process would start
    the run over). A restarted process listens on the port the first one bound. Each
    process may run ``timeout`` seconds (default :func:`attempt_seconds`) before it is
    killed and counted as a crash.

    Raises:
        ValueError: serve() refused the configuration (e.g. an unreadable initial model).
        ServerProcessError: serve() raised anything else, or the process crashed more
            often than allowed.
    """
    if max_restarts < 0:
        raise ValueError(f"max_restarts must be 0 or more, got {max_restarts}")
    limit = timeout or attempt_seconds(
        config.num_rounds, config.join_timeout, config.round_timeout, config.grace_period
    )
    restarts = 0
    with tempfile.TemporaryDirectory(prefix="fl-server-") as folder:
        while True:
            crash, port = _run_once(config, Path(folder), restarts, limit)
            if isinstance(crash, ServeResult):
                return crash
            if config.checkpoint_dir is None:
                raise ServerProcessError(f"{crash}; no checkpoint_dir, so it is not restarted")
            if restarts >= max_restarts:
                raise ServerProcessError(
                    f"{crash}; not restarted again: {max_restarts} restart(s) already"
                )
            restarts += 1
            if port:
                config = dataclasses.replace(config, port=port)
            log.warning(
                "%s; restarting it (restart %d of %d), resuming from the checkpoint in %s",
                crash,
                restarts,
                max_restarts,
                config.checkpoint_dir,
            )


def _run_once(
    config: ServerConfig, folder: Path, attempt: int, limit: float
) -> tuple[ServeResult | str, int | None]:
    """One child process: its result, or a description of how it crashed, and its port."""
    result_file = folder / f"result-{attempt}.json"
    port_file = folder / f"port-{attempt}.json"
    command = [sys.executable, "-m", MODULE, str(result_file), str(port_file)]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE)
    log.info("server process started (pid %d): %s", proc.pid, " ".join(command))
    timed_out = False
    try:
        with contextlib.suppress(BrokenPipeError):  # it died at once: its status tells why
            pickle.dump(config, proc.stdin)
            proc.stdin.flush()
        # stdin stays open: the child exits when it closes, i.e. if this process dies.
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            timed_out = True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
    port = _read_port(port_file)
    if timed_out:
        return f"server process (pid {proc.pid}) still running after {limit:g}s", port
    # Written atomically as the process's last act: if it is there, the run is over.
    if result_file.is_file():
        answer = json.loads(result_file.read_text(encoding="utf-8"))
        if "exception" in answer:
            message = answer["message"]
            if answer["exception"] == "ValueError":
                raise ValueError(message)
            raise ServerProcessError(f"the server raised {answer['exception']}: {message}")
        return _result(answer), port
    return f"server process (pid {proc.pid}) {_describe_exit(proc.returncode)}", port


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code} without a result"


def _read_port(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _result(answer: dict[str, Any]) -> ServeResult:
    def path(key: str) -> Path | None:
        return Path(answer[key]) if answer.get(key) else None

    return ServeResult(
        ok=bool(answer["ok"]),
        error=answer.get("error"),
        history=answer["history"],
        weights_path=path("weights_path"),
        history_path=path("history_path"),
    )


def _exit_with_parent(stdin_fd: int) -> None:
    """Block until the parent closes our stdin (it exited or was killed), then leave.

    Reads the raw descriptor: a daemon thread blocked in the buffered ``sys.stdin``
    holds its lock, and the interpreter's shutdown then aborts with "Fatal Python
    error: _enter_buffered_busy".
    """
    while os.read(stdin_fd, 1 << 16):
        pass
    log.error("the server task (parent process) is gone: stopping the server")
    os._exit(EXIT_ORPHANED)


def main(argv: list[str] | None = None) -> int:
    """Child entry point: ``python -m fl_kubeflow.tasks.server_process RESULT PORT_FILE``."""
    from fl_kubeflow.server.serve import serve

    result_file, port_file = (Path(arg) for arg in (argv or sys.argv[1:]))
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    config: ServerConfig = pickle.load(sys.stdin.buffer)
    threading.Thread(target=_exit_with_parent, args=(sys.stdin.fileno(),), daemon=True).start()

    def listening(port: int) -> None:
        files.write_json(port_file, {"port": port})

    try:
        result = serve(config, on_listening=listening)
    except Exception as exc:
        log.exception("the server failed")
        files.write_json(result_file, {"exception": type(exc).__name__, "message": str(exc)})
        return EXIT_RAISED
    files.write_json(
        result_file,
        {
            "ok": result.ok,
            "error": result.error,
            "history": result.history,
            "weights_path": str(result.weights_path) if result.weights_path else None,
            "history_path": str(result.history_path) if result.history_path else None,
        },
    )
    return EXIT_ANSWERED


if __name__ == "__main__":
    raise SystemExit(main())
