"""Child processes of a local run: own session, output to a file, stopped for sure."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

STOP_TIMEOUT_S = 10.0


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


def start(name: str, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> Child:
    """Run ``python -m fl_kubeflow ARGS`` with output to ``log_path``.

    A new session keeps a terminal's Ctrl-C away from the children, so the runner
    alone decides how they stop.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fl_kubeflow", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    return Child(name, proc, log_path)


def stop_all(children: list[Child]) -> None:
    for child in children:
        if child.proc.poll() is None:
            child.proc.terminate()
    for child in children:
        child.stop()
