"""Many clients in one process, on threads: for load tests and benchmarks.

Each client has its own HTTP session and trainer, so to the server they are as
separate as pods; the numpy trainers release the GIL often enough for this.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from fl_kubeflow.auth import auth_headers
from fl_kubeflow.client.federated_client import ClientSummary, FederatedClient
from fl_kubeflow.client.trainer import Trainer


@dataclass
class SwarmResult:
    summaries: dict[str, ClientSummary] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)


def run_swarm(
    server_url: str,
    num_clients: int,
    make_trainer: Callable[[int], Trainer],
    *,
    token: str | None = None,
    timeout: float = 600.0,
    retry_timeout: float = 60.0,
    first_id: int = 0,
) -> SwarmResult:
    """Run ``num_clients`` clients to the end of the run, or until ``timeout``.

    Args:
        server_url: The server's base URL.
        num_clients: How many clients this process runs, one thread each.
        make_trainer: The trainer of client ``index``.
        token: The run's shared token, if it has one.
        timeout: Longest wait for the run's end (and for each round to open).
        retry_timeout: How long each request retries an unreachable server.
        first_id: The first client's id: ids are first_id..first_id+num_clients-1, so
            several processes can share one federation.
    """
    result = SwarmResult()
    lock = threading.Lock()

    def one(index: int) -> None:
        client = FederatedClient(
            server_url,
            str(index),
            make_trainer(index),
            retry_timeout=retry_timeout,
            round_wait_timeout=timeout,
            headers=auth_headers(token),
        )
        try:
            summary = client.run()
        except BaseException as exc:  # reported to the caller, who decides
            with lock:
                result.errors[str(index)] = exc
            return
        with lock:
            result.summaries[str(index)] = summary

    threads = [
        threading.Thread(target=one, args=(i,), name=f"client-{i}", daemon=True)
        for i in range(first_id, first_id + num_clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    stuck = [t.name for t in threads if t.is_alive()]
    for name in stuck:
        result.errors[name.removeprefix("client-")] = TimeoutError(f"{name} still running")
    return result
