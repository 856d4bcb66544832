"""Partitioning: disjoint, covering, seeded shards; Dirichlet skew that is measurably skewed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_kubeflow.training.partition import (
    PartitionSpec,
    dirichlet_partition,
    iid_partition,
    parse_partition,
    partition_indices,
)

LABELS = np.repeat(np.arange(10), 100)  # 1,000 samples, 10 balanced classes


def assert_disjoint_cover(shards: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(shards)
    assert len(joined) == n, "shards must not overlap or drop samples"
    assert np.array_equal(np.sort(joined), np.arange(n))


def label_skew(shards: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean total-variation distance between each client's label distribution and the global."""
    classes = np.unique(labels)
    overall = np.array([np.mean(labels == c) for c in classes])
    distances = []
    for shard in shards:
        local = np.array([np.mean(labels[shard] == c) for c in classes])
        distances.append(0.5 * np.abs(local - overall).sum())
    return float(np.mean(distances))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("iid", PartitionSpec("iid")),
        (" IID ", PartitionSpec("iid")),
        ("dirichlet:0.5", PartitionSpec("dirichlet", 0.5)),
        ("Dirichlet:100", PartitionSpec("dirichlet", 100.0)),
        ("dirichlet:1e-2", PartitionSpec("dirichlet", 0.01)),
    ],
)
def test_parse_partition_accepts(text: str, expected: PartitionSpec) -> None:
    assert parse_partition(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "unknown partition"),
        ("random", "unknown partition"),
        ("dirichlet", "unknown partition"),
        ("dirichlet:", "not a number"),
        ("dirichlet:abc", "not a number"),
        ("dirichlet:0", "> 0"),
        ("dirichlet:-1", "> 0"),
        ("dirichlet:nan", "> 0"),
        ("dirichlet:inf", "> 0"),
    ],
)
def test_parse_partition_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as info:
        parse_partition(text)
    assert repr(text) in str(info.value)


def test_partition_spec_str_round_trips() -> None:
    for text in ("iid", "dirichlet:0.5"):
        assert str(parse_partition(text)) == text


def test_iid_disjoint_cover_balanced() -> None:
    shards = iid_partition(1001, 7, seed=3)
    assert_disjoint_cover(shards, 1001)
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_iid_seeded() -> None:
    a, b, c = (iid_partition(500, 4, seed=s) for s in (1, 1, 2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize(("n", "clients"), [(3, 4), (10, 0)])
def test_iid_rejects_bad_counts(n: int, clients: int) -> None:
    with pytest.raises(ValueError, match="clients"):
        iid_partition(n, clients, seed=0)


def test_dirichlet_disjoint_cover_and_min_size() -> None:
    shards = dirichlet_partition(LABELS, 5, alpha=0.3, seed=0, min_size=20)
    assert_disjoint_cover(shards, len(LABELS))
    assert min(len(s) for s in shards) >= 20


def test_dirichlet_seeded() -> None:
    a, b, c = (dirichlet_partition(LABELS, 4, 0.5, seed=s) for s in (7, 7, 8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_dirichlet_skew_is_visible() -> None:
    clients = 5
    iid = label_skew(iid_partition(len(LABELS), clients, seed=0), LABELS)
    skewed = [
        label_skew(dirichlet_partition(LABELS, clients, 0.1, seed=s), LABELS) for s in range(5)
    ]
    mild = [
        label_skew(dirichlet_partition(LABELS, clients, 100.0, seed=s), LABELS) for s in range(5)
    ]
    # iid shards of 200 from 10 balanced classes sit within a few percent of uniform;
    # alpha=0.1 leaves each client a few dominant classes.
    assert iid < 0.1
    assert min(skewed) > iid + 0.3
    assert np.mean(mild) < np.mean(skewed) - 0.3


def test_dirichlet_gives_up_with_advice() -> None:
    # 100 clients, 10 classes, alpha 0.01: nearly every class lands on one client.
    with pytest.raises(ValueError, match="larger alpha or fewer clients"):
        dirichlet_partition(LABELS, 100, 0.01, seed=0, min_size=5, max_retries=5)


def test_dirichlet_rejects_impossible_min_size() -> None:
    with pytest.raises(ValueError, match="at least 300"):
        dirichlet_partition(LABELS, 4, 1.0, seed=0, min_size=300)


def test_dirichlet_rejects_bad_alpha() -> None:
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_partition(LABELS, 4, 0.0, seed=0)


def test_partition_indices_dispatches() -> None:
    iid = partition_indices(LABELS, 3, "iid", seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(iid, iid_partition(1000, 3, 0), strict=True))
    skewed = partition_indices(LABELS, 3, "dirichlet:0.2", seed=0, min_size=5)
    expected = dirichlet_partition(LABELS, 3, 0.2, seed=0, min_size=5)
    assert all(np.array_equal(a, b) for a, b in zip(skewed, expected, strict=True))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=300),
    clients=st.integers(min_value=1, max_value=12),
    classes=st.integers(min_value=1, max_value=6),
    alpha=st.floats(min_value=0.05, max_value=50),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_any_partition_is_disjoint_cover(
    n: int, clients: int, classes: int, alpha: float, seed: int
) -> None:
    if clients > n:
        with pytest.raises(ValueError):
            iid_partition(n, clients, seed)
        return
    labels = np.random.default_rng(seed).integers(0, classes, size=n)
    assert_disjoint_cover(iid_partition(n, clients, seed), n)
    shards = dirichlet_partition(labels, clients, alpha, seed, min_size=0)
    assert len(shards) == clients
    assert_disjoint_cover(shards, n)
