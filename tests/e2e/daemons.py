"""Processes and folders of the e2e node cluster: where everything lives under its root
folder, how long each wait may take, and daemons started detached with pidfiles, so that a
later run (or `python -m tests.e2e.node_cluster down`) can stop what an earlier one left.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = Path("/var/lib/fl-kubeflow-e2e")

# /usr/local/bin/docker on these machines is a newer client that shadows Debian's.
DOCKER = "/usr/bin/docker"


def _timeout_scale() -> float:
    """``FL_E2E_TIMEOUT_SCALE`` multiplies every wait below (a slower machine, a busier day)."""
    try:
        return max(float(os.environ.get("FL_E2E_TIMEOUT_SCALE", "1")), 0.1)
    except ValueError:
        return 1.0


@dataclass(frozen=True)
class Timeouts:
    """Seconds each step may take; generous: two shared cores, several engineers at once."""

    docker: float = 60.0
    etcd: float = 60.0
    apiserver: float = 120.0
    controller_manager: float = 90.0
    scheduler: float = 60.0
    node_ready: float = 180.0
    proxy: float = 60.0
    dns: float = 60.0
    namespace: float = 60.0
    stop: float = 30.0
    debootstrap: float = 900.0
    image_build: float = 1800.0
    # The e2e run waiting for the cluster scripts/test.sh prestarted (tests/e2e/prestart.py):
    # it may still be building the base and project images.
    prestart: float = 2700.0

    @classmethod
    def from_env(cls) -> Timeouts:
        scale = _timeout_scale()
        return cls(**{name: value * scale for name, value in asdict(cls()).items()})


class ClusterStartError(RuntimeError):
    """A part of the node cluster failed to start, become ready, or build an image."""


@dataclass(frozen=True)
class Layout:
    """Where everything lives under the cluster's root folder."""

    root: Path

    @classmethod
    def from_env(cls) -> Layout:
        return cls(Path(os.environ.get("FL_E2E_ROOT", str(DEFAULT_ROOT))))

    @property
    def docker_data(self) -> Path:  # kept between runs: the image cache
        return self.root / "docker"

    @property
    def run(self) -> Path:  # pidfiles, sockets, dockerd's exec root
        return self.root / "run"

    @property
    def logs(self) -> Path:  # kept for post-mortems, overwritten by the next run
        return self.root / "logs"

    @property
    def state(self) -> Path:  # the cluster's state: removed by down()
        return self.root / "state"

    @property
    def cache(self) -> Path:  # debootstrap's scratch folder
        return self.root / "cache"

    @property
    def docker_sock(self) -> Path:
        return self.run / "docker.sock"

    @property
    def kubelet_dir(self) -> Path:
        return self.state / "kubelet"

    @property
    def kubeconfig(self) -> Path:
        return self.state / "admin.kubeconfig"

    @property
    def info_file(self) -> Path:
        return self.state / "cluster.json"

    @property
    def hostpath(self) -> Path:  # hostPath volumes and PVs: the node is this machine
        return self.state / "hostpath"

    @property
    def dns_hosts(self) -> Path:
        return self.state / "dns" / "services.hosts"

    def pidfile(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def shared_dir() -> Path:
    """``K8S_SHARED_DIR``, else ``<repo>/../shared/k8s`` (as scripts/k8s-assets.sh)."""
    return Path(os.environ.get("K8S_SHARED_DIR", str(REPO_ROOT.parent / "shared" / "k8s")))


def assets_dir() -> Path:
    """Where scripts/k8s-assets.sh unpacked the binaries (``KUBEBUILDER_ASSETS`` overrides)."""
    return Path(os.environ.get("KUBEBUILDER_ASSETS", str(REPO_ROOT / ".k8s-assets")))


# Daemons this process started, by pid (their pidfiles name them for other processes).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _set_parent_death_signal() -> None:
    """In the child: get SIGTERM when the starting process dies (a killed pytest leaks none)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone, and is reaped if it is our child)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait until every pid exited; return those still alive at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        living = [pid for pid in pids if alive(pid)]
        if not living or time.monotonic() >= deadline:
            return living
        time.sleep(0.1)


def terminate(pids: Sequence[int], timeout: float) -> None:
    """SIGTERM, then SIGKILL whatever outlives ``timeout``."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    survivors = wait_gone(pids, timeout)
    for pid in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_gone(survivors, timeout)


def read_pidfile(layout: Layout, name: str) -> int | None:
    """The recorded pid if that process still runs the recorded program (pids get reused)."""
    try:
        pid_text, program = layout.pidfile(name).read_text().split("\n")[:2]
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    child = _CHILDREN.get(pid)
    if child is not None:  # ours: between fork and exec its cmdline is still Python's
        return pid if child.poll() is None else None
    argv = cmdline(pid)
    return pid if argv and argv[0] == program and alive(pid) else None


def spawn(
    layout: Layout, name: str, args: list[str], die_with_parent: bool, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    layout.logs.mkdir(parents=True, exist_ok=True)
    with layout.log(name).open("wb") as log_file:
        popen = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            # Its own session: a Ctrl-C in the terminal reaches pytest, whose teardown then
            # stops the cluster in order, instead of every daemon at once.
            start_new_session=True,
            preexec_fn=_set_parent_death_signal if die_with_parent else None,
        )
    layout.pidfile(name).write_text(f"{popen.pid}\n{args[0]}\n")
    _CHILDREN[popen.pid] = popen
    return popen


def log_tail(layout: Layout, name: str, lines: int = 30) -> str:
    try:
        text = layout.log(name).read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text[-lines:])


def wait_until(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    layout: Layout,
    watched: Sequence[str],
    interval: float = 0.25,
) -> None:
    """Poll ``check`` until true; fail fast with its log if a watched daemon died."""
    deadline = time.monotonic() + timeout
    while True:
        for name in watched:
            if read_pidfile(layout, name) is None:
                raise ClusterStartError(
                    f"{name} exited while {what}; {layout.log(name)} ends:\n"
                    + log_tail(layout, name)
                )
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() >= deadline:
            raise ClusterStartError(
                f"timed out after {timeout:.0f}s {what}; {layout.log(watched[-1])} ends:\n"
                + log_tail(layout, watched[-1])
            )
        time.sleep(interval)


def run(args: Sequence[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def docker_command(layout: Layout) -> list[str]:
    """The docker client talking to the cluster's own dockerd."""
    return [DOCKER, "-H", f"unix://{layout.docker_sock}"]


def mount_points() -> list[str]:
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4]
            points.append(point.replace("\\040", " ").replace("\\011", "\t"))
    return points


def unmount_under(folder: Path) -> list[str]:
    """Unmount everything mounted at or below ``folder``, deepest first; return what was."""
    prefix = str(folder).rstrip("/")
    points = sorted(
        {p for p in mount_points() if p == prefix or p.startswith(prefix + "/")},
        key=len,
        reverse=True,
    )
    for point in points:
        if run(["umount", point], 60).returncode != 0:
            run(["umount", "-l", point], 60)
    return points
