"""A server that scales in clients: long-polls parked without threads, many clients.

Real server processes on loopback. The server's worker pool is 32 threads plus one per
update that may wait for the next model (ServerConfig.server_threads, update_holds, at
most MAX_UPDATE_HOLDS) whatever N is: held model long-polls must not take them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
import sys
import time
from pathlib import Path

from fl_kubeflow import files, wire
from fl_kubeflow.client.numpy_trainers import random_weights
from fl_kubeflow.server.config import MAX_UPDATE_HOLDS, PARKED_SERVER_THREADS
from tests.fl_processes import ServerProcess, start_server

SHAPES = [(8, 4), (4,)]
# Beyond the worker pool: the socket loops, the run's driver, the guard, the parker...
OTHER_THREADS = 24
HELD = 200


def _pool(clients: int) -> int:
    """The server's worker threads for ``clients`` (started with it; none are added)."""
    from fl_kubeflow.server.config import ServerConfig

    return ServerConfig(num_clients=clients, num_rounds=1).server_threads


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def _server(folder: Path, clients: int, rounds: int) -> ServerProcess:
    """A server for ``clients`` x ``rounds``, its model from a file, timeouts of 2 min."""
    initial = folder / "initial.safetensors"
    files.write_bytes(initial, wire.encode(random_weights(SHAPES, seed=0)))
    options = {"clients": clients, "rounds": rounds, "initial-weights": initial}
    options |= {"join-timeout": 120, "round-timeout": 120, "grace-period": 30}
    args = [a for name, value in options.items() for a in (f"--{name}", str(value))]
    return start_server(folder, *args, log_level="WARNING")


def _join(port: int, client_id: str) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(
        "POST",
        "/v1/join",
        body=json.dumps({"client_id": client_id}),
        headers={"X-FL-Client-Id": client_id, "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    assert response.status == 200, response.read()
    response.read()
    return conn


def _ask_model(conn: http.client.HTTPConnection, client_id: str, wait: float) -> None:
    conn.request("GET", f"/v1/model?round=1&wait={wait}", headers={"X-FL-Client-Id": client_id})


def test_held_long_polls_take_no_worker_thread(tmp_path):
    """200 long-polls held at once, none in a worker thread: other requests are still served at
    once, a poll whose wait ends gets its 204, and when the round opens every held poll
    gets the model."""
    server = _server(tmp_path, HELD + 2, 1)
    try:
        held = {}
        for i in range(HELD):
            held[str(i)] = _join(server.port, str(i))
            _ask_model(held[str(i)], str(i), 60)
        # Sent after every held poll: served while they wait, as a thread each would not be.
        last = _join(server.port, "last")
        started = time.monotonic()
        _ask_model(last, "last", 1)
        response = last.getresponse()
        assert response.status == 204, response.read()
        response.read()
        assert time.monotonic() - started < 30
        assert _threads(server.proc.pid) <= _pool(HELD + 2) + OTHER_THREADS
        # The last client's join opens round 1 (all joined): every held poll is answered.
        _ask_model(last, "last", 60)
        _join(server.port, "opener")
        for client_id, conn in held.items():
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200, (client_id, body)
            assert response.getheader("X-FL-Round") == "1"
            assert set(wire.decode(body)) == set(random_weights(SHAPES, seed=0))
        assert last.getresponse().status == 200
    finally:
        server.kill()


SWARM = """
import sys
from fl_kubeflow.client.numpy_trainers import DeltaTrainer
from fl_kubeflow.client.swarm import run_swarm
url, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
result = run_swarm(url, count, lambda i: DeltaTrainer({shapes!r}, delta=1.0), timeout=120,
                   first_id=first)
print(len(result.summaries), "done", dict(list(result.errors.items())[:3]))
sys.exit(1 if result.errors else 0)
"""


def test_three_hundred_clients_from_three_processes(tmp_path):
    """300 clients (three load processes) train two rounds on the pool started with the
    server (no thread added however many wait)."""
    clients, processes = 300, 3
    server = _server(tmp_path, clients, 2)
    try:
        share = clients // processes
        loads = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    SWARM.format(shapes=SHAPES),
                    server.url,
                    str(first),
                    str(share),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for first in range(0, clients, share)
        ]
        peak, deadline = 0, time.monotonic() + 240
        while any(p.poll() is None for p in loads) and time.monotonic() < deadline:
            peak = max(peak, _threads(server.proc.pid))
            with contextlib.suppress(subprocess.TimeoutExpired):  # sampling as they run
                next(p for p in loads if p.poll() is None).wait(0.2)
        outputs = [p.communicate(timeout=120)[0] for p in loads]
        assert [p.returncode for p in loads] == [0] * processes, outputs
        assert server.wait(120) == 0, server.log()[-2000:]
    finally:
        server.kill()
    assert peak <= _pool(clients) + OTHER_THREADS
    history = server.history()
    assert [len(r["contributors"]) for r in history["rounds"][1:]] == [clients] * 2
    final = server.final_weights()
    for name, w0 in random_weights(SHAPES, seed=0).items():
        assert abs(float((final[name] - w0).mean()) - 2.0) < 1e-4


def test_updates_waiting_for_the_next_model_have_threads_beside_the_pool() -> None:
    """An update sent with next=1 waits in a worker thread of its own beside the 32 that
    answer at once (the 300-client run above stalls for minutes if every worker waits),
    up to MAX_UPDATE_HOLDS; where threads grow with N every client may."""
    from fl_kubeflow.secagg.params import SecAggParams
    from fl_kubeflow.server.config import ServerConfig

    run = ServerConfig(num_clients=300, num_rounds=1)
    assert run.update_holds == 300
    assert run.server_threads == PARKED_SERVER_THREADS + 300
    large = ServerConfig(num_clients=10 * MAX_UPDATE_HOLDS, num_rounds=1)
    assert large.update_holds == MAX_UPDATE_HOLDS
    assert large.server_threads == PARKED_SERVER_THREADS + MAX_UPDATE_HOLDS
    assert ServerConfig(num_clients=8, num_rounds=1).update_holds == 8
    secure = ServerConfig(num_clients=300, num_rounds=1, secure_aggregation=SecAggParams())
    assert secure.update_holds == 300
