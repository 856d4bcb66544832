"""Secure aggregation's options, the choice of the graph's k and t, and the graph itself."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import pytest

from fl_kubeflow.secagg import graph
from fl_kubeflow.secagg.params import (
    CORRECTNESS_BITS,
    OPTION_NAMES,
    SECURITY_BITS,
    GraphParams,
    SecAggParams,
    choose_graph,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "secure_aggregation.md"


def test_defaults_round_trip_through_the_round_config():
    params = SecAggParams(bits=64, range=0.25, max_weight=7, timeout=5)
    config = json.loads(json.dumps({**params.to_config(), "weighting": "uniform"}))
    assert set(config) == {*OPTION_NAMES, "weighting"}
    assert SecAggParams.from_config(config) == params
    assert SecAggParams().to_config()["bits"] == 32


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"bits": 16}, "bits"),
        ({"bits": True}, "bits"),
        ({"range": 0}, "range"),
        ({"range": math.inf}, "range"),
        ({"max_weight": 0}, "max_weight"),
        ({"max_weight": 2.5}, "max_weight"),
        ({"max_weight": 2**31}, "max_weight"),
        ({"dropout_fraction": 1.0}, "dropout_fraction"),
        ({"corrupt_fraction": -0.1}, "corrupt_fraction"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": "soon"}, "timeout"),
    ],
)
def test_an_option_out_of_range_is_refused_by_name(options, named):
    with pytest.raises(ValueError, match=named):
        SecAggParams(**options)


def test_from_options_parses_text_and_names_the_valid_options():
    params = SecAggParams.from_options({"bits": "64", "range": "0.5", "max_weight": "1000"})
    assert (params.bits, params.range, params.max_weight) == (64, 0.5, 1000)
    with pytest.raises(ValueError, match="max_weight"):
        SecAggParams.from_options({"max_weight": "lots"})
    with pytest.raises(ValueError, match=r"unknown secagg option.*valid: bits, range"):
        SecAggParams.from_options({"bitz": "32"})


@pytest.mark.parametrize(
    "config",
    [
        [],
        {"bits": 32},
        {**SecAggParams().to_config(), "extra": 1},
        {**SecAggParams().to_config(), "bits": "32"},
    ],
)
def test_from_config_refuses_what_to_config_did_not_write(config):
    with pytest.raises(ValueError):
        SecAggParams.from_config(config)


def test_check_federation():
    SecAggParams().check_federation(3)
    with pytest.raises(ValueError, match="at least 3"):
        SecAggParams().check_federation(2)
    # 2**32 / 100_000 = 42949.67: the weights' sum of that many could wrap.
    with pytest.raises(ValueError, match="wrap"):
        SecAggParams(dropout_fraction=0, corrupt_fraction=0).check_federation(42950)
    with pytest.raises(ValueError, match="no SecAgg\\+ graph"):
        SecAggParams(dropout_fraction=0.5, corrupt_fraction=0.4).check_federation(10)


def _tail(population: int, marked: int, draws: int, at_least: int) -> float:
    """P(at least ``at_least`` of ``marked`` among ``draws`` of ``population``), as a float."""
    total = math.comb(population, draws)
    hits = sum(
        math.comb(marked, x) * math.comb(population - marked, draws - x)
        for x in range(max(at_least, 0), min(marked, draws) + 1)
    )
    return hits / total


def _meets(n: int, k: int, t: int, dropped: int, corrupt: int) -> tuple[bool, bool]:
    """(security, correctness) of (k, t) by the doc's two union bounds, in floats."""
    secure = n * _tail(n - 1, corrupt, k, 2 * t - k) <= 2.0**-SECURITY_BITS
    correct = n * _tail(n - 1, dropped, k, k - t + 1) <= 2.0**-CORRECTNESS_BITS
    return secure, correct


@pytest.mark.parametrize("n", [3, 4, 5, 8, 13, 16, 32, 61, 100])
@pytest.mark.parametrize(("delta", "gamma"), [(0.2, 0.1), (0.1, 0.05), (0.3, 0.0), (0.0, 0.2)])
def test_choose_graph_is_the_smallest_that_meets_both_bounds(n, delta, gamma):
    dropped, corrupt = math.floor(delta * n), math.floor(gamma * n)
    candidates = [*range(2, n, 2)] + ([n - 1] if (n - 1) % 2 else [])
    # Each k with its smallest secure t, kept if that t is also correct.
    meets = []
    for k in candidates:
        t = next(t for t in range(1, k + 2) if t > k or _meets(n, k, t, dropped, corrupt)[0])
        if t <= k and _meets(n, k, t, dropped, corrupt)[1]:
            meets.append((k, t))
    if not meets:
        with pytest.raises(ValueError, match=f"no SecAgg\\+ graph for {n} clients"):
            choose_graph(n, delta, gamma)
        return
    chosen = choose_graph(n, delta, gamma)
    assert (chosen.k, chosen.t) == meets[0]
    assert chosen.complete == (chosen.k == n - 1)


def test_the_docs_table_is_what_choose_graph_gives():
    text = DOC.read_text()
    rows = re.findall(r"^\| (\d+) \| \d+ \| \d+ \| (\d+) \| (\d+) \|", text, re.MULTILINE)
    assert [int(n) for n, _, _ in rows] == [3, 5, 8, 16, 32, 100, 1000]
    for n, k, t in rows:
        assert choose_graph(int(n), 0.2, 0.1) == GraphParams(int(k), int(t))


def test_choose_graph_refuses_impossible_fractions():
    with pytest.raises(ValueError, match="dropout_fraction"):
        choose_graph(10, 1.5, 0.1)
    with pytest.raises(ValueError, match="no SecAgg"):
        choose_graph(20, 0.45, 0.3)


def _ids(n: int) -> list[str]:
    return [f"client-{i:03d}" for i in range(n)]


@pytest.mark.parametrize(
    ("n", "k"),
    [(n, k) for n in (3, 4, 5, 8, 9, 16, 33) for k in range(2, n, 2)]
    + [(n, n - 1) for n in (2, 4, 8, 16)],
)
def test_neighbours_is_a_symmetric_k_regular_graph_without_loops(n, k):
    ids = _ids(n)
    seed = graph.roster_seed([(c, bytes(32), bytes([i % 256]) * 32) for i, c in enumerate(ids)])
    result = graph.neighbours(ids, k, seed)
    assert list(result) == ids
    for c, around in result.items():
        assert len(around) == len(set(around)) == k
        assert around == sorted(around) and c not in around
        assert all(c in result[o] for o in around)
    assert graph.neighbours(ids, k, seed) == result
    if k == n - 1:
        assert all(set(result[c]) == set(ids) - {c} for c in ids)


def test_the_seed_picks_the_graph():
    ids = _ids(16)
    graphs = {json.dumps(graph.neighbours(ids, 4, bytes([s]) * 32)) for s in range(8)}
    assert len(graphs) == 8


@pytest.mark.parametrize("k", [0, 3, 8, 9])
def test_neighbours_refuses_a_degree_it_cannot_build(k):
    with pytest.raises(ValueError, match="k must be even"):
        graph.neighbours(_ids(8), k, bytes(32))


def test_neighbours_wants_sorted_distinct_ids():
    with pytest.raises(ValueError, match="sorted and distinct"):
        graph.neighbours(["b", "a", "c"], 2, bytes(32))
    with pytest.raises(ValueError, match="sorted and distinct"):
        graph.neighbours(["a", "a", "c"], 2, bytes(32))


def test_roster_seed_covers_every_field_and_not_the_order():
    roster = [(c, bytes([i]) * 32, bytes([i + 100]) * 32) for i, c in enumerate(_ids(4))]
    seed = graph.roster_seed(roster)
    assert graph.roster_seed(roster[::-1]) == seed
    for i, j in itertools.product(range(4), range(3)):
        entry = list(roster[i])
        entry[j] = entry[j] + ("x" if j == 0 else b"")
        if j:
            entry[j] = bytes([entry[j][0] ^ 1]) + entry[j][1:]
        changed = [*roster[:i], tuple(entry), *roster[i + 1 :]]
        assert graph.roster_seed(changed) != seed
