"""AsyncFederation driven through its methods, where a moment must be held still: an
update arriving while the buffer is full, and the draw of a freed slot.

Version 1 is opened by hand (``_open_round``, what the driver does once every client
joined) so that the driver (``run``) starts only when the test lets it.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from fl_kubeflow import strategies, wire
from fl_kubeflow.async_params import AsyncParams
from fl_kubeflow.protocol import Phase
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.errors import RunFailed, WrongRound
from fl_kubeflow.server.fedbuff import AsyncFederation
from fl_kubeflow.strategies.sampling import sample_clients

TIMEOUT = 30.0


def weights(value: float) -> wire.Weights:
    return {"w": np.full(4, value, np.float32)}


def federation(
    clients: str,
    rounds: int,
    fraction_fit: float = 1.0,
    strategy: str = "fedavg",
    server: dict | None = None,
    **options,
):
    """Clients ``clients`` (comma-separated) joined, version 1's buffer open, no driver;
    ``server``: more ServerConfig fields, ``options``: AsyncParams."""
    ids = tuple(clients.split(","))
    params = AsyncParams(**options)
    config = ServerConfig(
        num_clients=len(ids),
        num_rounds=rounds,
        client_ids=ids,
        **{"grace_period": 5.0, "round_timeout": TIMEOUT, **(server or {})},
        asynchronous=params,
    )
    rule = strategies.build(
        strategy,
        {"fraction_fit": fraction_fit},
        num_clients=len(ids),
        min_clients=None,
        asynchronous=params,
    )
    fed = AsyncFederation(config, rule, initial_weights=weights(0.0))
    for client_id in ids:
        fed.join(client_id)
    with fed._cond:
        fed._open_round(1)
    return fed


def in_thread(target, *args) -> tuple[threading.Thread, list]:
    """Run ``target(*args)`` in a thread; the list gets its result or its exception."""
    out: list = []

    def call() -> None:
        try:
            out.append(target(*args))
        except Exception as exc:  # the test looks at it
            out.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, out


def wait_until(condition, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def end(fed: AsyncFederation, driver: threading.Thread, clients: str) -> None:
    """Each client hears the run is finished and leaves; the driver returns."""
    for client_id in clients:
        assert fed.wait_for_model(client_id, 1, 0).phase is Phase.FINISHED
        fed.leave(client_id)
    driver.join(TIMEOUT)
    assert not driver.is_alive()


def test_an_update_arriving_at_a_full_buffer_counts_in_the_next_version():
    fed = federation("a,b,c", 2, buffer_size=2)
    for client_id in "abc":
        assert fed.wait_for_model(client_id, 1, 0).server_round == 1
    fed.submit_update("a", 1, 1, {}, wire.encode(weights(1.0)))
    fed.submit_update("b", 1, 1, {}, wire.encode(weights(3.0)))
    # The buffer holds K = 2 and the driver is not running: c's update must wait.
    waiting, answer = in_thread(fed.submit_update, "c", 1, 2, {}, wire.encode(weights(6.0)))
    waiting.join(0.3)
    assert waiting.is_alive() and fed.status()["submitted"] == ["a", "b"]
    driver, finished = in_thread(fed.run)
    waiting.join(TIMEOUT)
    assert answer == [{"accepted": True, "duplicate": False, "round": 1}]
    # Version 1 = 2 (mean of 1 and 3); c's change of 6 from version 0, one version stale.
    model = fed.wait_for_model("a", 2, TIMEOUT)
    assert model.server_round == 2
    np.testing.assert_array_equal(wire.decode(model.body)["w"], np.full(4, 2.0, np.float32))
    fed.submit_update("a", 2, 1, {}, wire.encode(weights(2.5)))
    wait_until(lambda: fed.status()["completed_rounds"] == 2)
    end(fed, driver, "abc")
    assert finished == [True]
    record = fed.history()["rounds"][2]
    assert record["staleness"] == {"a": 0, "c": 1}
    assert record["base_versions"] == {"a": 1, "c": 0}
    # (2 * 6 / sqrt(2) + 1 * 0.5) / 3 from version 1
    expected = np.float32(2.0 + (2 * 6.0 * 2**-0.5 + 0.5) / 3)
    np.testing.assert_allclose(fed.final_weights()["w"], expected, rtol=1e-6)


def test_a_freed_slot_goes_to_a_waiting_client_drawn_with_the_seeded_sampler():
    """fraction_fit = 0.5 of four clients: two slots. c and d wait; a's update frees
    one, and the strategy's sampler (seed 0) draws who gets it."""
    fed = federation("a,b,c,d", 2, fraction_fit=0.5, buffer_size=1)
    assert fed.concurrency == 2
    for client_id in "ab":
        assert fed.wait_for_model(client_id, 1, 0).server_round == 1
    polls = {c: in_thread(fed.wait_for_model, c, 1, TIMEOUT) for c in "cd"}
    wait_until(lambda: {"c", "d"} <= fed._polling)
    driver, _ = in_thread(fed.run)
    fed.submit_update("a", 1, 1, {}, wire.encode(weights(1.0)))
    # Draws 1 and 2 gave a and b their slots; the third is among c and d.
    (chosen,) = sample_clients(["c", "d"], 0.5, 1, 0, 3, stream="fit")
    other = "d" if chosen == "c" else "c"
    polls[chosen][0].join(TIMEOUT)
    # Version 0 or 1, whichever is newest when it wakes: the slot frees as a's update lands.
    assert polls[chosen][1][0].phase is Phase.FIT
    assert polls[other][0].is_alive()  # still waiting: no slot is free
    fed.abort("test over")
    polls[other][0].join(TIMEOUT)
    assert isinstance(polls[other][1][0], RunFailed)
    driver.join(TIMEOUT)


def test_a_server_optimizer_steps_on_the_staleness_weighted_mean():
    """FedAdam, K = 2, eta = 0.5: finish_round gets w[c] + eta * mean, as the doc says."""
    fed = federation("a,b,c", 2, strategy="fedadam", buffer_size=2, server_learning_rate=0.5)
    for client_id in "abc":
        fed.wait_for_model(client_id, 1, 0)
    driver, _ = in_thread(fed.run)
    fed.submit_update("a", 1, 1, {}, wire.encode(weights(1.0)))
    fed.submit_update("b", 1, 3, {}, wire.encode(weights(2.0)))
    w1 = fed.wait_for_model("a", 2, TIMEOUT)
    fed.submit_update("c", 1, 2, {}, wire.encode(weights(4.0)))  # one version stale
    fed.submit_update("a", 2, 2, {}, wire.encode(weights(-1.0)))
    wait_until(lambda: fed.status()["completed_rounds"] == 2)
    # The same rule, fed by hand with this test's own aggregates.
    twin = strategies.create("fedadam")
    w0 = weights(0.0)
    mean1 = (1 * 1.0 + 3 * 2.0) / 4
    v1 = twin.finish_round(1, w0, {"w": w0["w"] + np.float32(0.5 * mean1)})
    np.testing.assert_allclose(wire.decode(w1.body)["w"], v1["w"], rtol=1e-6)
    base1 = v1["w"].astype(np.float64)
    mean2 = (2 * 2**-0.5 * (4.0 - 0.0) + 2 * (-1.0 - base1)) / 4
    v2 = twin.finish_round(2, v1, {"w": (base1 + 0.5 * mean2).astype(np.float32)})
    np.testing.assert_allclose(fed.final_weights()["w"], v2["w"], rtol=1e-6)
    end(fed, driver, "abc")


def test_only_bases_of_training_clients_are_kept_and_others_refused():
    """K = 1: b trains on version 0 while a makes versions 1 and 2; b leaves (its slot
    goes), so version 0 is dropped when version 3 opens and b's update is refused."""
    fed = federation("a,b", 4, buffer_size=1, max_staleness=5)
    driver, _ = in_thread(fed.run)
    assert fed.wait_for_model("b", 1, 0).server_round == 1
    for version in (0, 1):
        assert fed.wait_for_model("a", version + 1, TIMEOUT).server_round == version + 1
        fed.submit_update("a", version + 1, 1, {}, wire.encode(weights(version + 1.0)))
        wait_until(lambda v=version: fed.status()["completed_rounds"] == v + 1)
    assert sorted(fed._bases) == [0, 2]  # b's base, and the newest (nobody trains on 1)
    fed.leave("b")
    assert fed.wait_for_model("a", 3, TIMEOUT).server_round == 3
    fed.submit_update("a", 3, 1, {}, wire.encode(weights(3.0)))
    wait_until(lambda: fed.status()["completed_rounds"] == 3)
    assert sorted(fed._bases) == [3]
    fed.join("b")
    with pytest.raises(WrongRound, match="update based on version 0, which this server no "):
        fed.submit_update("b", 1, 1, {}, wire.encode(weights(9.0)))
    assert fed.wait_for_model("b", 2, 0).server_round == 4  # b goes on from the newest
    fed.submit_update("b", 4, 1, {}, wire.encode(weights(4.0)))
    wait_until(lambda: fed.phase is Phase.FINISHED)
    end(fed, driver, "ab")
    history = fed.history()
    assert history["rounds"][4]["refused"][0]["client"] == "b"
    np.testing.assert_array_equal(fed.final_weights()["w"], weights(4.0)["w"])
