"""Secure aggregation end to end: a real server process and real client processes on loopback.

The aggregate equals FedAvg's within the quantisation bound; clients that crash after
sending their shares or their masked input are recovered from (up to the threshold);
beyond it the run fails naming the drop-outs and writes no model; Keras digits learn
as well with secure aggregation as without. Drop-outs are client processes that end
themselves right after one POST (tests/secagg_dropout_client.py).
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from fl_kubeflow.cli.secagg_options import SWITCH, flag
from fl_kubeflow.client.numpy_trainers import random_weights
from fl_kubeflow.local import processes
from fl_kubeflow.secagg.params import SecAggParams, choose_graph
from fl_kubeflow.secagg.quantise import Quantiser
from tests.fl_processes import (
    ClientProcess,
    ServerProcess,
    run_cli,
    start_delta_clients,
    start_server,
    wait_all,
)
from tests.secagg_dropout_client import DIED

# The last tensor makes a masked input over 1 MiB: received into a receive slot.
SHAPES = [(16, 8), (8,), (3, 3, 2), (300_000,)]
SHAPES_ARG = ["--shapes", "16x8,8,3x3x2,300000"]
DROPOUT_CLIENT = Path(__file__).with_name("secagg_dropout_client.py")
# Seconds a stage after the keys waits for a client that is gone: every wait on a
# drop-out costs this, so it is short, but long beside a stage's work at this P.
STAGE_TIMEOUT = 4.0


def secure_options(**options: float) -> list[str]:
    """``--secure-aggregation`` and one ``--secagg-NAME VALUE`` per option."""
    flags = [SWITCH, flag("timeout"), str(STAGE_TIMEOUT)]
    for name, value in options.items():
        flags += [flag(name), str(value)]
    return flags


def lossy_server(folder: Path, n: int, quorum: int, **options: float) -> ServerProcess:
    """A secure one-round server for ``n`` clients that may lose all but ``quorum``."""
    return start_server(
        folder,
        *("--clients", str(n), "--rounds", "1", "--min-clients", str(quorum)),
        # Lost clients never hear "finished": the server waits this long for them.
        *("--grace-period", "2"),
        *secure_options(**options),
    )


def fedavg_step(deltas: Sequence[float], counts: Sequence[int], clip: float) -> float:
    """FedAvg's change per round of delta clients, each change clipped to [-clip, clip]."""
    clipped = np.clip(deltas, -clip, clip)
    return float(np.dot(clipped, counts) / sum(counts))


def assert_model_moved_by(final: dict[str, np.ndarray], step: float, tolerance: float) -> None:
    """Every parameter of ``final`` is the initial model's plus ``step``, within ``tolerance``."""
    initial = random_weights(SHAPES, seed=0)
    assert sorted(final) == sorted(initial)
    for name, w0 in initial.items():
        assert final[name].dtype == np.float32
        error = np.abs(final[name].astype(np.float64) - (w0.astype(np.float64) + step))
        assert error.max() <= tolerance, (name, error.max(), tolerance)


def start_dropout_client(
    folder: Path,
    url: str,
    client_id: int,
    stage: str,
    delta: float,
    count: int,
    record: Path | None = None,
) -> ClientProcess:
    """A delta client that ends itself once its POST of ``stage`` was answered (``never``:
    runs to its end), writing its requests to ``record``."""
    log_path = folder / f"client-{client_id}.log"
    summary = folder / f"client-{client_id}.json"
    command = [
        sys.executable,
        str(DROPOUT_CLIENT),
        stage,
        *(["--record", str(record)] if record else []),
        "--",
        "client",
        "--server",
        url,
        "--client-id",
        str(client_id),
        "--trainer",
        "numpy-delta",
        "--summary",
        str(summary),
        "--delta",
        str(delta),
        "--num-examples",
        str(count),
        *SHAPES_ARG,
    ]
    child = processes.spawn(f"client {client_id}", command, log_path, new_session=False)
    return ClientProcess(child.proc, str(client_id), log_path, summary)


def test_secure_fedavg_equals_plain_fedavg_within_the_bound(tmp_path):
    # Client 2's change (2.0) is beyond the range (1.0): it is clipped to 1.0.
    rounds, deltas, counts = 2, [0.5, -0.3, 2.0], [10, 30, 60]
    params = SecAggParams(timeout=STAGE_TIMEOUT)
    # One receive slot that no one waits for long: a masked POST holding its slot while
    # it waits for the stage's end would keep the next client's input out for 30 s.
    slots = ["--receive-slots", "1", "--slot-patience", "30"]
    server = start_server(
        tmp_path, "--clients", "3", "--rounds", str(rounds), *slots, *secure_options()
    )
    clients = start_delta_clients(tmp_path, server.url, deltas, counts, *SHAPES_ARG)
    assert wait_all(clients) == [0, 0, 0], [c.log() for c in clients]
    assert server.wait() == 0, server.log()
    bound = Quantiser(params).error_bound
    step = fedavg_step(deltas, counts, params.range)
    # Per round: the quantisation bound, plus float32 rounding of the model (|w| < 6).
    assert_model_moved_by(server.final_weights(), rounds * step, rounds * (bound + 1e-6))
    # Unclipped FedAvg is far from it: the clipping did happen.
    assert abs(fedavg_step(deltas, counts, np.inf) - step) > 100 * bound
    history = server.history()
    assert history["status"] == "finished"
    graph = choose_graph(3, params.dropout_fraction, params.corrupt_fraction)
    for record in history["rounds"][1:]:
        secure = record["secure_aggregation"]
        assert (secure["neighbours"], secure["threshold"]) == (graph.k, graph.t)
        assert (secure["roster"], secure["survivors"], secure["revealed"]) == (3, 3, 3)
        assert secure["dropped_at_shares"] == secure["dropped_at_masked"] == []
        assert secure["dropped_at_reveal"] == []
        assert secure["weighting"] == "examples" and secure["total_weight"] == sum(counts)
        assert secure["error_bound"] == pytest.approx(bound)
        assert record["num_examples"] == sum(counts)
        assert sorted(record["contributors"]) == ["0", "1", "2"]
        assert record["duration_s"] < 15
    # Every element of client 2's change was clipped, none of the others'.
    fit = [c.summary()["fit"] for c in clients]
    size = sum(int(np.prod(s)) for s in SHAPES)
    assert [f["1"]["secagg_clipped"] for f in fit] == [0, 0, size]


def test_clients_lost_after_shares_and_after_masked_input_are_recovered(tmp_path):
    # Six clients tolerating two drop-outs: client 4 is lost after its shares (its pair
    # masks are removed with its neighbours' shares of its key), client 5 after its
    # masked input (it is in the sum; its self-mask is removed with its neighbours' shares).
    n, dropout_fraction = 6, 0.35
    graph = choose_graph(n, dropout_fraction, SecAggParams().corrupt_fraction)
    assert graph.k - graph.t >= 2, graph  # two lost neighbours leave t shares of every secret
    deltas, counts = [0.1, -0.2, 0.3, 0.05, 0.7, -0.6], [5, 10, 20, 40, 80, 160]
    server = lossy_server(tmp_path, n, 4, dropout_fraction=dropout_fraction)
    steady = start_delta_clients(tmp_path, server.url, deltas[:4], counts[:4], *SHAPES_ARG)
    lost = [
        start_dropout_client(tmp_path, server.url, 4, "shares", deltas[4], counts[4]),
        start_dropout_client(tmp_path, server.url, 5, "masked", deltas[5], counts[5]),
    ]
    assert wait_all(lost) == [DIED, DIED], [c.log() for c in lost]
    assert wait_all(steady) == [0] * 4, [c.log() for c in steady]
    assert server.wait() == 0, server.log()
    survivors = [0, 1, 2, 3, 5]
    step = fedavg_step([deltas[i] for i in survivors], [counts[i] for i in survivors], 1.0)
    bound = Quantiser(SecAggParams()).error_bound
    assert_model_moved_by(server.final_weights(), step, bound + 1e-6)
    record = server.history()["rounds"][1]
    secure = record["secure_aggregation"]
    assert (secure["roster"], secure["survivors"], secure["revealed"]) == (6, 5, 4)
    assert secure["dropped_at_shares"] == []
    assert secure["dropped_at_masked"] == ["4"]
    assert secure["dropped_at_reveal"] == ["5"]
    assert secure["total_weight"] == record["num_examples"] == sum(counts[i] for i in survivors)
    assert sorted(record["contributors"]) == [str(i) for i in survivors]


def test_more_drop_outs_than_the_threshold_fail_the_run_without_a_model(tmp_path):
    # Four clients (a round needs at least three): k = 2, t = 2. Client 3 lost after its
    # shares leaves each of its two neighbours' self-mask seeds one share short.
    params = SecAggParams()
    assert choose_graph(4, params.dropout_fraction, params.corrupt_fraction).t == 2
    server = lossy_server(tmp_path, 4, 3)
    steady = start_delta_clients(tmp_path, server.url, [0.1, 0.2, 0.3], [1, 1, 1], *SHAPES_ARG)
    lost = start_dropout_client(tmp_path, server.url, 3, "shares", 0.4, 1)
    assert lost.wait() == DIED, lost.log()
    assert server.wait() == 1, server.log()
    # Client 3's neighbours refuse to reveal (one surviving neighbour, below t); the
    # other client hears why the run failed. Every one of them stops with exit 1.
    assert wait_all(steady) == [1, 1, 1]
    history = server.history()
    assert history["status"] == "failed"
    assert "too many drop-outs" in history["error"], history["error"]
    reasons = ("too many drop-outs", "neighbours survived; the threshold is 2")
    assert all(any(r in c.log() for r in reasons) for c in steady), [c.log() for c in steady]
    assert [r["round"] for r in history["rounds"]] == [0]
    assert not (server.output / "weights.safetensors").exists()


@pytest.mark.slow
def test_digits_learn_as_well_with_secure_aggregation(tmp_path):
    """Keras mlp on digits, 3 clients, 3 rounds: within 1 point of plain FedAvg (the
    10-round comparison is in benchmarks/secure_aggregation.py)."""
    accuracy = {}
    for name, extra in (("plain", []), ("secure", [SWITCH])):
        out = tmp_path / name
        done = run_cli(
            "local",
            "--output",
            str(out),
            "--clients",
            "3",
            "--rounds",
            "3",
            "--model",
            "mlp",
            *extra,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        history = json.loads((out / "history.json").read_text())
        accuracy[name] = history["rounds"][-1]["evaluate"]["metrics"]["accuracy"]
        if name == "secure":
            assert all("secure_aggregation" in r for r in history["rounds"][1:])
    assert accuracy["plain"] > 0.8, accuracy
    assert abs(accuracy["secure"] - accuracy["plain"]) <= 0.01, accuracy


def test_sampled_clients_alone_make_each_secure_round(tmp_path):
    # Six clients, half of them asked per round (fraction_fit 0.5, quorum 3): each round's
    # roster is its sample, and the model moves by the weighted mean of the sample's changes.
    rounds, deltas, counts = 2, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [1, 2, 3, 4, 5, 6]
    params = SecAggParams(timeout=STAGE_TIMEOUT)
    server = start_server(
        tmp_path,
        *("--clients", "6", "--rounds", str(rounds), "--min-clients", "3"),
        *("--strategy-option", "fraction_fit=0.5"),
        *secure_options(),
    )
    clients = start_delta_clients(tmp_path, server.url, deltas, counts, *SHAPES_ARG)
    assert wait_all(clients) == [0] * 6, [c.log() for c in clients]
    assert server.wait() == 0, server.log()
    history = server.history()
    moved = 0.0
    samples = []
    for record in history["rounds"][1:]:
        sampled = sorted(record["sampled"])
        samples.append(sampled)
        assert len(sampled) == 3 and sorted(record["contributors"]) == sampled, record
        secure = record["secure_aggregation"]
        assert (secure["roster"], secure["survivors"]) == (3, 3), secure
        chosen = [int(c) for c in sampled]
        assert secure["total_weight"] == sum(counts[i] for i in chosen)
        moved += fedavg_step([deltas[i] for i in chosen], [counts[i] for i in chosen], 1.0)
    # The seeded sampler picked different clients in the two rounds here (seed 0): the
    # check below would not tell a sample from everyone otherwise.
    assert samples[0] != samples[1], samples
    bound = Quantiser(params).error_bound
    assert_model_moved_by(server.final_weights(), moved, rounds * (bound + 1e-6))


def test_central_dp_adds_its_noise_to_the_unmasked_mean(tmp_path):
    # FedAvgM under central DP, clients clipping (C = 5) and weighting 1 each: the server
    # adds noise of std z * C / m to the unmasked mean and accounts for it.
    z, clip = 0.1, 5.0
    server = start_server(
        tmp_path,
        *("--clients", "3", "--rounds", "2", "--strategy", "fedavgm"),
        *(
            "--strategy-option",
            f"noise_multiplier={z}",
            "--strategy-option",
            f"clipping_norm={clip}",
        ),
        *("--strategy-option", "clipping=client"),
        *secure_options(),
    )
    clients = start_delta_clients(tmp_path, server.url, [0.1, 0.2, 0.3], [10, 20, 30], *SHAPES_ARG)
    assert wait_all(clients) == [0, 0, 0], [c.log() for c in clients]
    assert server.wait() == 0, server.log()
    for record in server.history()["rounds"][1:]:
        assert record["secure_aggregation"]["weighting"] == "uniform"
        assert record["secure_aggregation"]["total_weight"] == 3
        dp = record["strategy"]["dp"]
        assert dp["clipping"] == "client" and dp["noise_std"] == pytest.approx(z * clip / 3)
        assert dp["epsilon"] is not None and dp["epsilon"] > 0


def requests_of(record: Path) -> list[tuple[str, str, int, str]]:
    """The requests a recording client made: (method, path, status, content type)."""
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    return [(r["method"], r["path"], r["status"], r["type"]) for r in lines]


def test_later_rounds_share_ahead_and_take_two_posts(tmp_path):
    # Three clients, three rounds: round 1 is the model GET, keys, shares, masked and
    # reveal. The masked input announces the next round's keys, the unmask request
    # brings that round's roster, the reveal carries the shares for it, and the reveal's
    # answer is the next round's model with the inbox: rounds 2 and 3 open past their
    # key and share stages, two POSTs each (masked, reveal): no keys or shares POST, no
    # roster GET, no model GET after round 1's (the final model comes in the last reveal).
    rounds, deltas, counts = 3, [0.1, -0.2, 0.3], [2, 3, 5]
    server = start_server(tmp_path, "--clients", "3", "--rounds", str(rounds), *secure_options())
    records = [tmp_path / f"requests-{i}.jsonl" for i in range(3)]
    clients = [
        start_dropout_client(tmp_path, server.url, i, "never", d, n, record)
        for i, (d, n, record) in enumerate(zip(deltas, counts, records, strict=True))
    ]
    assert wait_all(clients) == [0] * 3, [c.log() for c in clients]
    assert server.wait() == 0, server.log()
    model, safetensors = "/v1/model", "application/vnd.safetensors"
    for record in records:
        made = requests_of(record)
        paths = [(method, path) for method, path, _, _ in made]
        assert paths.count(("POST", "/v1/secagg/keys")) == 1, made
        assert paths.count(("POST", "/v1/secagg/shares")) == 1, made
        assert paths.count(("POST", "/v1/secagg/masked")) == rounds, made
        assert not [p for p in paths if p[0] == "GET" and p[1].startswith("/v1/secagg/")], made
        assert [r for r in made if r[:2] == ("GET", model) and r[2] == 200] == [
            ("GET", model, 200, safetensors)
        ], made
        reveals = [r for r in made if r[1] == "/v1/secagg/reveal"]
        assert reveals == [("POST", "/v1/secagg/reveal", 200, safetensors)] * rounds, made
    history = server.history()
    assert [r["secure_aggregation"]["keys_announced"] for r in history["rounds"][1:]] == [0, 3, 3]
    ahead = [r["secure_aggregation"]["shares_ahead"] for r in history["rounds"][1:]]
    assert ahead == [False, True, True]
    for record in history["rounds"][1:]:
        assert record["secure_aggregation"]["survivors"] == 3, record
    bound = Quantiser(SecAggParams()).error_bound
    step = fedavg_step(deltas, counts, 1.0)
    assert_model_moved_by(server.final_weights(), rounds * step, rounds * (bound + 1e-6))


def test_clients_not_sampled_the_round_before_send_keys_beside_announced_ones(tmp_path):
    # Six clients, four of them per round: a client sampled in two rounds in a row uses
    # the keys it announced; one that was not (or was, but is not now) sends keys as
    # ever, and its announced keys are dropped. Every round has its whole sample.
    rounds, deltas, counts = 3, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [1, 2, 3, 4, 5, 6]
    server = start_server(
        tmp_path,
        *("--clients", "6", "--rounds", str(rounds), "--min-clients", "4"),
        *("--strategy-option", "fraction_fit=0.67"),
        *secure_options(),
    )
    clients = start_delta_clients(tmp_path, server.url, deltas, counts, *SHAPES_ARG)
    assert wait_all(clients) == [0] * 6, [c.log() for c in clients]
    assert server.wait() == 0, server.log()
    records = server.history()["rounds"][1:]
    samples = [set(r["sampled"]) for r in records]
    moved = 0.0
    for before, now, record in zip([set(), *samples], samples, records, strict=False):
        secure = record["secure_aggregation"]
        assert secure["keys_announced"] == len(before & now), (before, now, secure)
        assert (secure["roster"], secure["survivors"]) == (4, 4), secure
        chosen = [int(c) for c in now]
        moved += fedavg_step([deltas[i] for i in chosen], [counts[i] for i in chosen], 1.0)
    # Some client joins a round it was not sampled for the round before (seed 0).
    assert any(now - before for before, now in itertools.pairwise(samples)), samples
    assert any(before & now for before, now in itertools.pairwise(samples)), samples
    bound = Quantiser(SecAggParams()).error_bound
    assert_model_moved_by(server.final_weights(), moved, rounds * (bound + 1e-6))


def lose_client_5_in_round_1(tmp_path: Path, stage: str, *options: str) -> list[dict]:
    """Six clients tolerating two drop-outs, two rounds; client 5 dies once its round-1
    POST to ``stage`` is answered. The rounds' secure-aggregation records, once the
    final model is checked: round 1's mean of all six, round 2's of the other five."""
    n, dropout_fraction, rounds = 6, 0.35, 2
    deltas, counts = [0.1, -0.2, 0.3, 0.05, 0.7, -0.6], [5, 10, 20, 40, 80, 160]
    server = start_server(
        tmp_path,
        *("--clients", str(n), "--rounds", str(rounds), "--min-clients", "4"),
        *("--grace-period", "2", *options),
        *secure_options(dropout_fraction=dropout_fraction),
    )
    steady = start_delta_clients(tmp_path, server.url, deltas[:5], counts[:5], *SHAPES_ARG)
    lost = start_dropout_client(tmp_path, server.url, 5, stage, deltas[5], counts[5])
    assert lost.wait() == DIED, lost.log()
    assert wait_all(steady) == [0] * 5, [c.log() for c in steady]
    assert server.wait() == 0, server.log()
    step = fedavg_step(deltas, counts, 1.0) + fedavg_step(deltas[:5], counts[:5], 1.0)
    bound = Quantiser(SecAggParams()).error_bound
    assert_model_moved_by(server.final_weights(), step, rounds * (bound + 1e-6))
    return [r["secure_aggregation"] for r in server.history()["rounds"][1:]]


def test_a_client_lost_after_sharing_ahead_is_recovered_at_the_masked_stage(tmp_path):
    # Client 5's round-1 reveal carried its shares for round 2 and was answered (with
    # round 2's model). Round 2 opens with its key and share stages done in round 1,
    # client 5 in U2; its masked input never comes, and its neighbours' shares of its
    # key remove its masks. The masked stage gives its clients the training's time:
    # the round timeout.
    first, second = lose_client_5_in_round_1(
        tmp_path, "reveal", "--round-timeout", str(2 * STAGE_TIMEOUT)
    )
    assert (first["roster"], first["survivors"], first["shares_ahead"]) == (6, 6, False)
    assert (second["roster"], second["keys_announced"], second["shares_ahead"]) == (6, 6, True)
    assert second["dropped_at_shares"] == [] and second["dropped_at_masked"] == ["5"]
    assert second["survivors"] == 5


def test_a_client_lost_before_sharing_ahead_is_recovered_at_the_shares(tmp_path):
    # Client 5 dies once its round-1 masked input is answered: its round-1 reveal, with
    # its shares for round 2, never comes. Round 1 closes without its reveal; round 2
    # still opens with the shares the other five sent ahead (client 5 on the roster, by
    # the keys its masked input announced, dropped at the shares: no one adds its masks).
    first, second = lose_client_5_in_round_1(tmp_path, "masked")
    assert (first["survivors"], first["dropped_at_reveal"]) == (6, ["5"])
    assert (second["roster"], second["shares_ahead"], second["survivors"]) == (6, True, 5)
    assert second["dropped_at_shares"] == ["5"] and second["dropped_at_masked"] == []
