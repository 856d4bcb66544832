"""One simulation worker: a process hosting many virtual clients of one run.

Run as ``python -m fl_kubeflow.simulation.worker`` by the runner. The worker joins
its clients, then per round asks ``/v1/sampled`` (one long-poll for all of them)
which of its clients train, and runs those one after another on its one model:
each fetches its model, evaluates if the round asks it, trains and sends its
update, as a ``FederatedClient`` would. A few threads overlap the HTTP of the next
and previous clients with the training of the current one; idle clients hold
neither a thread nor a connection. At the end the clients asked to evaluate the
final model share one download of it, and every client leaves (a few hundred in one
request), so the server neither sends N final models nor waits out its grace period.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fl_kubeflow import protocol
from fl_kubeflow.auth import auth_headers, read_token
from fl_kubeflow.local.processes import LOOPBACK, READY_POLL_S
from fl_kubeflow.simulation.calls import Calls, RoundModel, Sampled
from fl_kubeflow.simulation.options import SimulationOptions
from fl_kubeflow.simulation.population import Population, make_population

log = logging.getLogger("fl_kubeflow.simulation")

# Threads for the HTTP of one worker: joins and leaves in parallel, and the models
# fetched (and updates sent) while another client trains.
HTTP_THREADS = 4
# Models fetched ahead of the client being trained: bounds the memory they take.
PREFETCH = 2
RETRY_TIMEOUT_S = 60.0

T = TypeVar("T")


@dataclass
class WorkerReport:
    """What one worker did, written as JSON for the runner."""

    worker: int
    clients: int
    fits: int = 0
    stale: int = 0
    evaluations: int = 0
    fit_s: float = 0.0
    rounds: list[int] = field(default_factory=list)
    final_downloads: int = 0
    leave_requests: int = 0


class Worker:
    """The virtual clients ``options.client_ids(index)`` against the server at ``url``.

    Args:
        options: The simulation.
        index: This worker's number, 0 to ``options.workers - 1``.
        url: The server's base URL.
        token: The run's shared token, if any.
        population: The clients' trainers; None: made from ``options``.
    """

    def __init__(
        self,
        options: SimulationOptions,
        index: int,
        url: str,
        token: str | None,
        population: Population | None = None,
    ) -> None:
        self.options = options
        self.ids = [str(c) for c in options.client_ids(index)]
        self.mine = set(self.ids)
        self.population = population or make_population(options, options.client_ids(index))
        self.report = WorkerReport(index, len(self.ids))
        headers = auth_headers(token)
        self.calls = Calls(url, headers, RETRY_TIMEOUT_S)
        # One Transport per HTTP thread: each keeps its own connection, never contended.
        self._local = threading.local()
        self._all_calls: list[Calls] = [self.calls]
        self._calls_lock = threading.Lock()
        self._make_calls: Callable[[], Calls] = lambda: Calls(url, headers, RETRY_TIMEOUT_S)
        self.pool = ThreadPoolExecutor(HTTP_THREADS, thread_name_prefix="http")
        self.deadline = time.monotonic() + options.timeout

    def run(self) -> WorkerReport:
        try:
            self._join_all()
            next_round = 1
            while True:
                sampled = self._wait_sampled(next_round)
                if sampled.phase == protocol.Phase.FINISHED.value:
                    self._finish(sampled)
                    return self.report
                next_round = self._train_round(sampled) + 1
        finally:
            self.pool.shutdown(wait=True)
            for calls in self._all_calls:
                calls.close()

    # ---------------------------------------------------------------- phases

    def _join_all(self) -> None:
        """Join every client; the first proposes the initial model if the server has none."""
        first, *rest = self.ids
        if self.calls.join(first).get("propose_initial"):
            self.calls.propose_initial(first, self.population.initial_weights())
        self._each(rest, lambda calls, c: calls.join(c))
        log.info("worker %d: %d clients joined", self.report.worker, len(self.ids))

    def _wait_sampled(self, server_round: int) -> Sampled:
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"round {server_round} did not open within the run's timeout")
            answer = self.calls.sampled(server_round, min(self.options.poll_wait, remaining))
            if answer is not None:
                return answer

    def _train_round(self, sampled: Sampled) -> int:
        """Run this worker's clients of the round; returns the round they trained for."""
        mine = [c for c in sampled.fit if c in self.mine]
        evaluators = set(sampled.evaluate)
        wait = self.options.poll_wait
        pending: deque[tuple[str, Future[RoundModel | None]]] = deque()
        queue = iter(mine)
        sent: list[Future[Any]] = []

        def fetch_next() -> None:
            client = next(queue, None)
            if client is not None:
                pending.append(
                    (client, self._http(lambda c: c.model(client, sampled.server_round, wait)))
                )

        for _ in range(PREFETCH):
            fetch_next()
        while pending:
            client, future = pending.popleft()
            model = future.result()
            fetch_next()
            if model is None or model.phase != protocol.Phase.FIT.value:
                continue  # the round closed without this client (its timeout)
            if model.config.get("evaluate", client in evaluators):
                sent.append(self._evaluate(client, model, model.server_round - 1))
            started = time.perf_counter()
            result = self.population.fit(
                int(client), model.weights, model.server_round, model.config
            )
            self.report.fit_s += time.perf_counter() - started
            self.report.fits += 1
            sent.append(self._http(lambda c, cl=client, m=model, r=result: c.update(cl, m, r)))
        stale = sum(1 for future in sent if future.result() is False)
        self.report.stale += stale
        self.report.rounds.append(sampled.server_round)
        log.info(
            "worker %d: round %d: %d of %d sampled clients are mine (%d stale)",
            self.report.worker,
            sampled.server_round,
            len(mine),
            len(sampled.fit),
            stale,
        )
        return sampled.server_round

    def _finish(self, sampled: Sampled) -> None:
        """Final evaluations on one download of the final model, then every client leaves."""
        evaluators = [c for c in sampled.evaluate if c in self.mine]
        if evaluators and self.population.evaluates:
            final = self.calls.model(
                evaluators[0], sampled.server_round + 1, self.options.poll_wait
            )
            self.report.final_downloads += 1
            if final is not None:
                done = [self._evaluate(c, final, final.server_round) for c in evaluators]
                for future in done:
                    future.result()
        # All of them in a few requests: one per client took longer than the server's
        # grace period with 10,000 clients on a loaded machine.
        batches = [
            self.ids[i : i + protocol.MAX_LEAVE_IDS]
            for i in range(0, len(self.ids), protocol.MAX_LEAVE_IDS)
        ]
        for future in [self._http(lambda calls, b=b: calls.leave_all(b)) for b in batches]:
            future.result()
        self.report.leave_requests += len(batches)
        log.info(
            "worker %d: %d clients left in %d requests",
            self.report.worker,
            len(self.ids),
            len(batches),
        )

    # --------------------------------------------------------------- helpers

    def _evaluate(self, client: str, model: RoundModel, server_round: int) -> Future[Any]:
        result = self.population.evaluate(int(client), model.weights, server_round)
        if result is None:
            done: Future[Any] = Future()
            done.set_result(None)
            return done
        self.report.evaluations += 1
        return self._http(lambda c: c.evaluate(client, server_round, result))

    def _http(self, call: Callable[[Calls], T]) -> Future[T]:
        return self.pool.submit(lambda: call(self._thread_calls()))

    def _each(self, clients: Sequence[str], call: Callable[[Calls, str], Any]) -> None:
        """``call`` for every client, on the HTTP threads; the first error is raised."""
        futures = [self._http(lambda calls, c=c: call(calls, c)) for c in clients]
        for future in futures:
            future.result()

    def _thread_calls(self) -> Calls:
        calls = getattr(self._local, "calls", None)
        if calls is None:
            calls = self._local.calls = self._make_calls()
            with self._calls_lock:
                self._all_calls.append(calls)
        return calls


def _wait_for_port(ready_file: Path, timeout: float) -> int:
    """The server's port, once its ready file exists (it is written when it listens)."""
    deadline = time.monotonic() + timeout
    while not ready_file.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server did not listen within {timeout:g}s")
        time.sleep(READY_POLL_S)
    return int(json.loads(ready_file.read_text())["port"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One worker of fl-kubeflow simulate.")
    parser.add_argument("--options", type=Path, required=True, help="the simulation's JSON")
    parser.add_argument("--index", type=int, required=True, help="this worker's number")
    parser.add_argument(
        "--ready-file", type=Path, required=True, help="the server's ready file (its port)"
    )
    parser.add_argument("--report", type=Path, required=True, help="where to write its report")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    options = SimulationOptions.load(args.options)
    # This process is the worker's alone: Keras's optional imports may be kept out.
    population = make_population(options, options.client_ids(args.index), skip_extras=True)
    port = _wait_for_port(args.ready_file, options.join_timeout)
    worker = Worker(options, args.index, f"http://{LOOPBACK}:{port}", read_token(), population)
    report = worker.run()
    args.report.write_text(json.dumps(report.__dict__, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
