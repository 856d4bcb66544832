"""How often an asynchronous run asks a waiting client's model answer again.

Every ``AsyncFederation._try_model`` call is one waiting model request (a parked
long-poll, a worker thread's, an update's ``next=1`` hold) asked again. Woken at every
change of the run (``_model_epoch`` answering "anything may have changed"), N waiters
are asked again at every update: N^2 calls a version. With the epoch they are asked when
a version is made, a slot frees while someone wanted one, or a draw chose someone.

Runs N FederatedClient threads (numpy delta trainer, real HTTP to an in-process waitress
server) through the same run with and without the epoch, alternately, and prints the
calls::

    flock /work/wt/bench.lock .venv/bin/python benchmarks/async_wakeups.py --clients 50
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

from fl_kubeflow import strategies
from fl_kubeflow.async_params import AsyncParams
from fl_kubeflow.client.federated_client import FederatedClient
from fl_kubeflow.client.numpy_trainers import DeltaTrainer
from fl_kubeflow.server.app import create_app
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.fedbuff import AsyncFederation
from fl_kubeflow.server.http_server import start_http_server
from fl_kubeflow.server.model_waits import ANY_CHANGE

TIMEOUT = 120.0


def run_once(clients: int, versions: int, options: dict[str, Any], epoch: bool) -> dict[str, Any]:
    """One run; its ``_try_model`` calls, updates and wall time."""
    ids = tuple(f"c{i}" for i in range(clients))
    params = AsyncParams(**options)
    config = ServerConfig(
        num_clients=clients,
        num_rounds=versions,
        client_ids=ids,
        host="127.0.0.1",
        port=0,
        join_timeout=TIMEOUT,
        round_timeout=TIMEOUT,
        poll_timeout=30.0,
        grace_period=10.0,
        asynchronous=params,
    )
    rule = strategies.build(
        "fedavg", {}, num_clients=clients, min_clients=None, asynchronous=params
    )
    fed = AsyncFederation(config, rule)
    calls = [0]
    try_model = fed._try_model

    def counted(client_id: str, server_round: int) -> Any:
        calls[0] += 1
        return try_model(client_id, server_round)

    fed._try_model = counted  # type: ignore[method-assign]
    if not epoch:
        fed._model_waits._epoch = lambda: ANY_CHANGE  # the run before the epoch
    server = start_http_server(create_app(fed, config), config, federation=fed)
    url = f"http://127.0.0.1:{server.port}"
    driver = threading.Thread(target=fed.run, daemon=True)
    started = time.monotonic()
    driver.start()

    def client(client_id: str) -> None:
        trainer = DeltaTrainer(delta=1.0)
        FederatedClient(url, client_id, trainer, retry_timeout=30, round_wait_timeout=60).run()

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in ids]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        driver.join(TIMEOUT)
    finally:
        server.close()
    wall = time.monotonic() - started
    history = fed.history()
    assert history["status"] == "finished", history.get("error")
    updates = sum(len(r["contributors"]) for r in history["rounds"][1:])
    return {"calls": calls[0], "updates": updates, "wall_s": round(wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--buffer-size", type=int, default=10)
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    options: dict[str, Any] = {"buffer_size": args.buffer_size}
    if args.max_concurrency is not None:
        options["max_concurrency"] = args.max_concurrency
    for repeat in range(args.repeats):
        for epoch in (False, True):
            result = run_once(args.clients, args.versions, options, epoch)
            with open("/proc/loadavg") as loadavg:
                load = loadavg.read().split()[0]
            label = "epoch" if epoch else "every change"
            print(f"run {repeat + 1} {label:12s} {result} load {load}", flush=True)


if __name__ == "__main__":
    main()
