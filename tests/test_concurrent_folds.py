"""A real ``Federation`` in this process, driven by its own ``run`` thread.

Updates are folded outside the federation's lock: what must still hold while a fold
runs, with FedAvg's fold slowed down so that the races happen every time, not by
chance. And the global model's tensors live in its message, whose memory is reused.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from fl_kubeflow import wire
from fl_kubeflow.recycling import Recycler
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.federation import Federation
from fl_kubeflow.strategies.fedavg import FedAvg, WeightedSum
from fl_kubeflow.wire import Weights

INITIAL = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}


class SlowSum(WeightedSum):
    """FedAvg's sum, with every fold taking at least ``delay`` seconds."""

    def __init__(self, arrays: Recycler, delay: float) -> None:
        super().__init__(arrays)
        self.delay = delay

    def _add(self, weights: Weights, num_examples: int, client_id: str | None = None) -> None:
        time.sleep(self.delay)
        super()._add(weights, num_examples, client_id)


class SlowFedAvg(FedAvg):
    name = "fedavg"

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def start_round(self, server_round: int, global_weights: Weights) -> SlowSum:
        return SlowSum(self._arrays, self.delay)


def _federation(delay: float, **options: Any) -> tuple[Federation, threading.Thread, list]:
    config = ServerConfig(host="127.0.0.1", port=0, **options)
    federation = Federation(config, SlowFedAvg(delay), initial_weights=INITIAL)
    outcome: list[bool] = []
    driver = threading.Thread(target=lambda: outcome.append(federation.run()), daemon=True)
    driver.start()
    return federation, driver, outcome


def _update(value: float) -> bytes:
    return wire.encode({name: np.full_like(a, value) for name, a in INITIAL.items()})


def _submit(
    federation: Federation, client: str, value: float, examples: int, server_round: int = 1
) -> dict:
    return federation.submit_update(client, server_round, examples, {}, _update(value))


def test_a_resend_during_the_fold_is_answered_as_the_duplicate_it_is():
    federation, driver, outcome = _federation(1.0, num_clients=2, num_rounds=1, grace_period=1)
    for client in ("a", "b"):
        federation.join(client)
    assert federation.wait_for_model("a", 1, wait=10) is not None
    first: list[dict] = []
    sender = threading.Thread(target=lambda: first.append(_submit(federation, "a", 1.0, 1)))
    sender.start()
    time.sleep(0.3)  # the first copy is being folded now
    started = time.monotonic()
    again = _submit(federation, "a", 1.0, 1)
    waited = time.monotonic() - started
    sender.join(10)
    assert first == [{"accepted": True, "duplicate": False, "round": 1}]
    assert again == {"accepted": True, "duplicate": True, "round": 1}
    assert waited > 0.4  # answered once the first copy was in, not before
    assert _submit(federation, "b", 4.0, 3)["duplicate"] is False
    for client in ("a", "b"):
        federation.leave(client)
    driver.join(30)
    assert outcome == [True]
    # Counted once: (1 * 1 + 3 * 4) / 4 = 3.25, not (1 + 1 + 12) / 5.
    for array in federation.final_weights().values():
        np.testing.assert_array_equal(array, np.float32(3.25))
    record = federation.history()["rounds"][1]
    assert record["contributors"] == ["a", "b"] and record["num_examples"] == 4


def test_the_round_timeout_waits_for_an_update_being_folded():
    # a's fold outlasts the round timeout; it arrived in time, so it counts, and the
    # round closes on it (min_clients 1) instead of failing or calling "a" timed out.
    federation, driver, outcome = _federation(
        1.5, num_clients=2, num_rounds=1, min_clients=1, round_timeout=0.5, grace_period=1
    )
    for client in ("a", "b"):
        federation.join(client)
    assert federation.wait_for_model("a", 1, wait=10) is not None
    assert _submit(federation, "a", 2.0, 5)["duplicate"] is False
    federation.leave("a")
    driver.join(30)
    assert outcome == [True]
    record = federation.history()["rounds"][1]
    assert record["contributors"] == ["a"] and record["timed_out"] == ["b"]
    for array in federation.final_weights().values():
        np.testing.assert_array_equal(array, np.float32(2.0))


@pytest.mark.parametrize("wire_dtype", ["float32", "float16"])
def test_the_global_model_lives_in_its_message_whose_memory_is_reused(wire_dtype):
    federation, driver, outcome = _federation(
        0.0, num_clients=1, num_rounds=4, grace_period=1, wire_dtype=wire_dtype
    )
    federation.join("a")
    for server_round in range(1, 5):
        answer = federation.wait_for_model("a", server_round, wait=10)
        assert answer is not None and answer.server_round == server_round
        del answer  # a request that has sent its model no longer holds the message
        _submit(federation, "a", float(server_round), 1, server_round)
    federation.leave("a")
    driver.join(30)
    assert outcome == [True]
    final = federation.final_weights()
    for array in final.values():
        np.testing.assert_array_equal(array, np.float32(4.0))
    message = np.frombuffer(federation._model.body, np.uint8)
    if wire_dtype == "float32":
        # One copy of the model: its tensors are the message's, and the messages of
        # rounds two back were written over instead of new memory (rounds 2, 3 and 4).
        assert all(np.shares_memory(a, message) for a in final.values())
        assert federation._model.bodies.reused == 3
    else:
        # A half-precision message holds other values: the float32 model stays apart.
        assert not any(np.shares_memory(a, message) for a in final.values())
