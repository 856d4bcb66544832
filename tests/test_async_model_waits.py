"""Model long-polls of an asynchronous run wake only when their answer may have changed
(``AsyncFederation._model_epoch``), and still get it in every case that changes it: a
new version, a freed training slot (an update folded, its holder revoked), a draw with
fraction_fit < 1, the run's end or failure, the waiter's own revocation.

Real HTTP: an in-process waitress server over an ``AsyncFederation`` whose driver the
test starts when it wants the next version made; each waiter is a ``GET /v1/model``
in a thread, parked without a thread (server/parking.py) or waiting in a worker
thread (no parker, as with TLS).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import requests

from fl_kubeflow import protocol, wire
from fl_kubeflow.server.app import create_app
from fl_kubeflow.server.fedbuff import AsyncFederation
from fl_kubeflow.server.http_server import RunningServer, start_http_server
from tests.test_fedbuff_federation import TIMEOUT, federation, wait_until, weights

# How long a waiter must stay unanswered to count as waiting (it was asked once).
STILL = 0.3


@dataclass
class Run:
    """An async run behind a real server; ``asked`` counts ``_try_model`` per client."""

    fed: AsyncFederation
    server: RunningServer
    asked: Counter[str] = field(default_factory=Counter)
    driver: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def drive(self) -> None:
        """Start the driver: versions are made from now on."""
        self.driver = threading.Thread(target=self.fed.run, daemon=True, name="driver")
        self.driver.start()

    def poll(self, client_id: str, server_round: int) -> Waiter:
        """``GET /v1/model?round=...`` for ``client_id``, answered in a thread."""
        waiter = Waiter(client_id)
        url = f"{self.url}/v1/model?round={server_round}&wait={TIMEOUT}"

        def get() -> None:
            try:
                response = requests.get(url, headers={"X-FL-Client-Id": client_id}, timeout=60)
            except requests.ConnectionError:
                return  # a poll a test leaves waiting is cut off when its server closes
            waiter.response.append(response)

        waiter.thread = threading.Thread(target=get, daemon=True)
        waiter.thread.start()
        wait_until(lambda: self.asked[client_id] >= 1)
        waiter.thread.join(STILL)
        assert waiter.thread.is_alive(), waiter.response  # it waits
        return waiter

    def submit(self, client_id: str, server_round: int, value: float) -> None:
        self.fed.submit_update(client_id, server_round, 1, {}, wire.encode(weights(value)))


@dataclass
class Waiter:
    client_id: str
    thread: threading.Thread | None = None
    response: list[requests.Response] = field(default_factory=list)

    def answer(self) -> requests.Response:
        assert self.thread is not None
        self.thread.join(TIMEOUT)
        assert self.response, f"{self.client_id} not answered within {TIMEOUT}s"
        return self.response[0]


@pytest.fixture(params=["parked", "thread"])
def start(request: pytest.FixtureRequest) -> Iterator[Callable[..., Run]]:
    """Start a run for clients ``ids`` (version 1's buffer open, no driver yet)."""
    runs: list[Run] = []

    def make(ids: str, rounds: int = 3, fraction_fit: float = 1.0, **options: Any) -> Run:
        server = {"host": "127.0.0.1", "port": 0, "grace_period": 0.5, "poll_timeout": TIMEOUT}
        fed = federation(",".join(ids), rounds, fraction_fit, server=server, **options)
        parked = request.param == "parked"
        http = start_http_server(
            create_app(fed, fed.config), fed.config, federation=fed if parked else None
        )
        run = Run(fed, http)
        try_model = fed._try_model

        def counted(client_id: str, server_round: int) -> Any:
            run.asked[client_id] += 1
            return try_model(client_id, server_round)

        fed._try_model = counted  # type: ignore[method-assign]
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.fed.abort("test over")
        run.server.close()
        if run.driver is not None:
            run.driver.join(TIMEOUT)


def test_a_new_version_answers_a_client_waiting_with_its_update_in(start) -> None:
    run = start("ab", buffer_size=2)
    for client_id in "ab":
        assert run.fed.wait_for_model(client_id, 1, 0).server_round == 1
    run.submit("a", 1, 1.0)
    waiter = run.poll("a", 2)  # a's update is in the buffer: it waits for version 1
    asked = run.asked["a"]
    # Changes that cannot alter a's answer ask nobody again: b's update accepted (its
    # slot freed while nobody wanted one), a bare notify.
    run.submit("b", 1, 3.0)
    with run.fed._cond:
        run.fed._cond.notify_all()
    time.sleep(STILL)
    assert run.asked["a"] == asked and waiter.thread.is_alive()
    run.drive()
    response = waiter.answer()
    assert response.status_code == 200 and response.headers["X-FL-Round"] == "2"
    np.testing.assert_array_equal(wire.decode(response.content)["w"], weights(2.0)["w"])


def test_a_freed_slot_answers_a_client_waiting_for_one(start) -> None:
    run = start("abc", buffer_size=3, max_concurrency=2)
    for client_id in "ab":
        assert run.fed.wait_for_model(client_id, 1, 0).server_round == 1
    waiter = run.poll("c", 1)  # both slots taken
    run.submit("a", 1, 1.0)  # folded: a's slot is free
    response = waiter.answer()
    assert response.status_code == 200 and response.headers["X-FL-Round"] == "1"


def test_a_slot_freed_by_revoking_its_holder_answers_a_waiting_client(start) -> None:
    run = start("ab", max_concurrency=1)
    assert run.fed.wait_for_model("a", 1, 0).server_round == 1
    waiter = run.poll("b", 1)
    run.fed.revoke("a")
    assert waiter.answer().headers["X-FL-Round"] == "1"


def test_a_draw_answers_the_client_it_chose(start) -> None:
    """fraction_fit 0.5 of four: two slots; a's update frees one, drawn among c and d."""
    run = start("abcd", fraction_fit=0.5, buffer_size=2)
    for client_id in "ab":
        assert run.fed.wait_for_model(client_id, 1, 0).server_round == 1
    waiters = [run.poll(c, 1) for c in "cd"]
    run.submit("a", 1, 1.0)
    wait_until(lambda: any(w.response for w in waiters))
    (chosen,) = [w for w in waiters if w.response]
    assert chosen.answer().headers["X-FL-Round"] == "1"
    (other,) = [w for w in waiters if w is not chosen]
    other.thread.join(STILL)
    assert other.thread.is_alive()  # no slot for it: still waiting


def test_the_waiters_own_revocation_answers_it(start) -> None:
    run = start("ab", max_concurrency=1)
    assert run.fed.wait_for_model("a", 1, 0).server_round == 1
    waiter = run.poll("b", 1)
    run.fed.revoke("b")
    response = waiter.answer()
    assert response.status_code == 401 and response.json()[protocol.ERROR_FIELD] == protocol.REVOKED


def test_the_runs_end_answers_a_waiting_client(start) -> None:
    run = start("ab", rounds=1, buffer_size=2)
    for client_id in "ab":
        assert run.fed.wait_for_model(client_id, 1, 0).server_round == 1
    run.submit("a", 1, 4.0)
    waiter = run.poll("a", 2)  # its update is in; then the last version is made
    run.submit("b", 1, 2.0)
    run.drive()
    response = waiter.answer()
    assert response.status_code == 200 and response.headers["X-FL-Phase"] == "finished"


def test_the_runs_failure_answers_a_waiting_client(start) -> None:
    run = start("ab", buffer_size=2)
    assert run.fed.wait_for_model("a", 1, 0).server_round == 1
    run.submit("a", 1, 1.0)
    waiter = run.poll("a", 2)
    run.fed.abort("the operator stopped it")
    response = waiter.answer()
    assert (
        response.status_code == 409 and response.json()[protocol.ERROR_FIELD] == protocol.RUN_FAILED
    )
