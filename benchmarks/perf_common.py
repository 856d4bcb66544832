"""Shared pieces of the benchmarks: model shapes, the copy limit, processes, the server.

Used by round_overhead.py, original_protocol.py, aggregation.py, run_perf.py, load.py
and half_precision.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from fl_kubeflow.local import processes as local_processes

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
# results.md's section that secure_aggregation.py writes (run_perf.py keeps it).
SECURE_SECTION = "## Secure aggregation (SecAgg+)"
# results.md's section on many clients (benchmarks/load.md's summary, written by hand).
SCALE_SECTION = "## Server scale"
# results.md's breakdown of a small-model client-round (request_costs.py's numbers).
LATENCY_SECTION = "## Small-model latency: where a client-round's time goes"
# results.md's link to simulation.md (benchmarks/simulation.py writes that file).
SIMULATION_SECTION = "## Many virtual clients"


def model_shapes(num_params: int) -> list[tuple[int, ...]]:
    """Four tensors (two weight matrices and their biases) totalling exactly ``num_params``."""
    width = 1000 if num_params >= 1_000_000 else 100
    rows = (num_params * 3 // 4) // width
    rest = num_params - rows * width - width
    inner = max(1, rest // 100)
    shapes: list[tuple[int, ...]] = [(rows, width), (width,), (inner, 100)]
    bias = num_params - rows * width - width - inner * 100
    if bias > 0:
        shapes.append((bias,))
    assert sum(int(np.prod(s)) for s in shapes) == num_params, shapes
    return shapes


def shapes_arg(shapes: Sequence[Sequence[int]]) -> str:
    """The ``--shapes`` CLI form: '16x8,8'."""
    return ",".join("x".join(str(d) for d in s) for s in shapes)


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM: ru_maxrss would include its parent's)."""
    from fl_kubeflow.server.memory import peak_rss_bytes as peak

    return peak()


def timed(fn: Callable[[], object], repeat: int = 5) -> float:
    """Median wall time of ``fn`` over ``repeat`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_seconds(num_params: int, num_clients: int, repeat: int = 5) -> float:
    """Time to numpy-copy N x P x 4 bytes each way: 2N copies of distinct float32 models.

    Distinct sources and destinations, as N clients' messages are distinct memory;
    destinations are touched first so page faults are not counted.
    """
    src = [np.full(num_params, i, dtype=np.float32) for i in range(num_clients)]
    dst = [np.zeros(num_params, dtype=np.float32) for _ in range(num_clients)]

    def run() -> None:
        for _ in range(2):
            for s, d in zip(src, dst, strict=True):
                np.copyto(d, s)

    return timed(run, repeat)


def load_average() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(max_load: float = 1.0, max_wait_s: float = 300.0) -> float:
    """Wait (bounded) until the 1-minute load is below ``max_load``; return the load seen."""
    deadline = time.monotonic() + max_wait_s
    load = load_average()
    while load >= max_load and time.monotonic() < deadline:
        time.sleep(10)
        load = load_average()
    return load


def machine_lines() -> list[str]:
    """Markdown bullet lines naming the machine and the versions that matter here."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    packages = ["numpy", "safetensors", "flask", "werkzeug", "waitress", "requests", "urllib3"]
    versions = []
    for name in packages:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return [
        f"- Machine: {cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, "
        f"{platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}; {', '.join(versions)}",
    ]


class Processes:
    """Child processes that are always killed on exit, whatever happened."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(
        self, name: str, command: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        return self.watch(local_processes.spawn(name, command, self.log_path(name), env))

    def watch(self, child: local_processes.Child) -> subprocess.Popen:
        """Make ``child`` one of these processes: waited for and killed with them."""
        self.procs.append((child.name, child.proc))
        return child.proc

    def log_path(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    def log(self, name: str, tail: int = 2000) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def wait_all(self, timeout: float) -> None:
        """Wait for every process to exit 0 within ``timeout`` seconds in total."""
        deadline = time.monotonic() + timeout
        for name, proc in self.procs:
            try:
                code = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise RuntimeError(
                    f"{name} still running after {timeout:g}s:\n{self.log(name)}"
                ) from None
            if code != 0:
                raise RuntimeError(f"{name} exited with {code}:\n{self.log(name)}")

    def kill_all(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for _, proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


@contextlib.contextmanager
def processes(folder: Path) -> Iterator[Processes]:
    """A ``Processes`` whose children are killed when the block ends."""
    folder.mkdir(parents=True, exist_ok=True)
    procs = Processes(folder)
    try:
        yield procs
    finally:
        procs.kill_all()


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    """Block until ``path`` exists; fail early if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before writing {path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} not written within {timeout:g}s")
        time.sleep(0.02)


def start_server(
    procs: Processes,
    folder: Path,
    clients: int,
    rounds: int,
    *options: str,
    env: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> str:
    """Start ``fl-kubeflow server`` on a free loopback port; return its URL once it listens.

    Its output goes to ``folder``/out; ``options`` are more server options; ``prefix``
    runs it under another program (a profiler).
    """
    run = ["--clients", str(clients), "--rounds", str(rounds), "--output", str(folder / "out")]
    server, port = local_processes.start_server(
        [*run, *options],
        folder / "ready.json",
        procs.log_path("server"),
        env,
        log_level="WARNING",
        prefix=prefix,
    )
    procs.watch(server)
    return f"http://127.0.0.1:{port}"


def start_clients(
    procs: Processes,
    folder: Path,
    script: Path,
    url: str,
    count: int,
    timeout: float,
    *options: str,
) -> None:
    """Start ``count`` processes of ``script client`` (one BLAS thread each: they share the
    cores); client i writes its summary to ``folder``/client-i.json."""
    for i in range(count):
        procs.start(
            f"client-{i}",
            [
                PYTHON,
                str(script),
                "client",
                "--server",
                url,
                "--client-id",
                str(i),
                "--summary",
                str(folder / f"client-{i}.json"),
                "--timeout",
                str(timeout),
                *options,
            ],
            env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
        )


def section_text(path: Path, heading: str) -> str:
    """The section of markdown file ``path`` that starts at ``heading``, up to the next
    '## ' heading ('' if there is none)."""
    text = path.read_text() if path.exists() else ""
    if heading not in text:
        return ""
    rest = text[text.index(heading) :]
    end = rest.find("\n## ", len(heading))
    return rest if end < 0 else rest[: end + 1]


def replace_section(path: Path, heading: str, lines: Sequence[str]) -> None:
    """Write ``lines`` as the section of ``path`` starting at ``heading`` (appended if it
    has none), keeping every other section as it is."""
    text = path.read_text() if path.exists() else ""
    old = section_text(path, heading)
    new = "\n".join(lines).rstrip("\n") + "\n"
    if old:
        text = text.replace(old, new + ("\n" if old.endswith("\n\n") else ""), 1)
    else:
        text = text.rstrip("\n") + "\n\n" + new
    path.write_text(text)


def client_summaries(folder: Path, count: int) -> list[dict[str, Any]]:
    """What the ``count`` clients started by ``start_clients`` wrote."""
    return [json.loads((folder / f"client-{i}.json").read_text()) for i in range(count)]
