"""Client data: digits offline, per-client npz files, and errors that name the bad value."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fl_kubeflow.training.datasets import (
    DatasetError,
    client_splits,
    dataset_spec,
    load_client_data,
    load_full_dataset,
    local_split,
)
from tests.http_files import serve_directory


def test_digits_shapes_and_ranges() -> None:
    data = load_client_data("digits", client_id=1, num_clients=3, seed=0)
    assert data.x_train.dtype == np.float32 and data.x_train.shape[1:] == (8, 8, 1)
    assert data.x_test.shape[1:] == (8, 8, 1)
    assert data.y_train.dtype == np.int64
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
    assert set(np.unique(data.y_train)) <= set(range(10))
    assert data.num_classes == 10 and data.input_shape == (8, 8, 1)
    # 1,797 / 3 = 599 per client; 20% of it held out locally.
    assert len(data.x_train) + len(data.x_test) == 599
    assert len(data.x_test) == round(599 * 0.2)
    assert "client 1 of 3" in data.description


def test_digits_client_splits_disjoint_cover_and_seeded() -> None:
    full = load_full_dataset("digits")
    splits = client_splits(full.y, 4, "dirichlet:0.5", seed=1, test_fraction=0.25)
    everything = np.concatenate([np.concatenate(pair) for pair in splits])
    assert np.array_equal(np.sort(everything), np.arange(len(full.y)))
    again = client_splits(full.y, 4, "dirichlet:0.5", seed=1, test_fraction=0.25)
    assert all(
        np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        for a, b in zip(splits, again, strict=True)
    )
    other = client_splits(full.y, 4, "dirichlet:0.5", seed=2, test_fraction=0.25)
    assert not np.array_equal(splits[0][0], other[0][0])


def test_client_data_matches_its_split() -> None:
    full = load_full_dataset("digits")
    train_idx, test_idx = client_splits(full.y, 3, "iid", seed=5, test_fraction=0.2)[2]
    data = load_client_data("digits", 2, 3, partition="iid", seed=5)
    assert np.array_equal(data.y_train, full.y[train_idx])
    assert np.array_equal(data.y_test, full.y[test_idx])
    np.testing.assert_allclose(data.x_train, full.features(train_idx))


def test_local_split_edges() -> None:
    train, test = local_split(10, 0.0, seed=0, client_id=0)
    assert len(train) == 10 and len(test) == 0
    train, test = local_split(2, 0.01, seed=0, client_id=0)  # rounds to 0, kept at 1
    assert len(train) == 1 and len(test) == 1
    with pytest.raises(ValueError, match="test_fraction"):
        local_split(10, 1.0, seed=0, client_id=0)


def test_no_test_data_when_fraction_zero() -> None:
    data = load_client_data("digits", 0, 2, test_fraction=0.0)
    assert len(data.x_test) == 0 and len(data.x_train) == 899


@pytest.mark.parametrize(("client_id", "clients"), [(3, 3), (-1, 3), (0, 0)])
def test_bad_client_id(client_id: int, clients: int) -> None:
    with pytest.raises(ValueError, match="client"):
        load_client_data("digits", client_id, clients)


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(DatasetError) as info:
        load_client_data("imagenet", 0, 1)
    message = str(info.value)
    assert "'imagenet'" in message
    for name in ("digits", "mnist", "fashion_mnist", "cifar10", "npz:"):
        assert name in message


def test_bad_partition_string_is_rejected() -> None:
    with pytest.raises(ValueError, match="dirichlet:oops"):
        load_client_data("digits", 0, 2, partition="dirichlet:oops")


def test_dataset_spec_without_loading() -> None:
    assert dataset_spec("digits") == ((8, 8, 1), 10)
    assert dataset_spec("cifar10") == ((32, 32, 3), 10)  # a table lookup: works offline


# ----------------------------------------------------------------- npz files


def write_client(path: Path, seed: int, n: int = 12, with_test: bool = True, **extra) -> None:
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.random((n, 4, 4, 1), dtype=np.float32),
        "y_train": rng.integers(0, 3, n),
    }
    if with_test:
        arrays["x_test"] = rng.random((5, 4, 4, 1), dtype=np.float32)
        arrays["y_test"] = rng.integers(0, 3, 5)
    arrays.update(extra)
    np.savez(path, **arrays)


@pytest.fixture
def clients_dir(tmp_path: Path) -> Path:
    for client_id in range(3):
        write_client(tmp_path / f"client-{client_id}.npz", seed=client_id, n=10 + client_id)
    return tmp_path


def test_npz_each_client_reads_its_own_file(clients_dir: Path) -> None:
    spec = f"npz:{clients_dir}/client-{{client_id}}.npz"
    for client_id in range(3):
        data = load_client_data(spec, client_id, num_clients=3)
        with np.load(clients_dir / f"client-{client_id}.npz") as raw:
            np.testing.assert_array_equal(data.x_train, raw["x_train"])
            np.testing.assert_array_equal(data.y_test, raw["y_test"])
        assert len(data.x_train) == 10 + client_id  # no partitioning, no local split
        assert data.input_shape == (4, 4, 1)
        assert f"client-{client_id}.npz" in data.description


def test_npz_file_uri(clients_dir: Path) -> None:
    data = load_client_data(f"npz:file://{clients_dir}/client-{{client_id}}.npz", 2, 3)
    assert len(data.x_train) == 12


@pytest.fixture
def http_root(clients_dir: Path) -> Iterator[str]:
    with serve_directory(clients_dir) as url:
        yield url


def test_npz_over_http(http_root: str) -> None:
    data = load_client_data(f"npz:{http_root}/client-{{client_id}}.npz", 1, 3)
    assert len(data.x_train) == 11
    with pytest.raises(DatasetError, match=r"client-7\.npz"):
        load_client_data(f"npz:{http_root}/client-{{client_id}}.npz", 7, 8)


def test_npz_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"client-1\.npz does not exist"):
        load_client_data(f"npz:{tmp_path}/client-{{client_id}}.npz", 1, 2)


def test_npz_missing_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "c0.npz", x_train=np.zeros((3, 2)), labels=np.zeros(3, int))
    with pytest.raises(DatasetError) as info:
        load_client_data(f"npz:{tmp_path}/c{{client_id}}.npz", 0, 1)
    assert "c0.npz" in str(info.value) and "y_train" in str(info.value)
    assert "labels" in str(info.value)  # what the file does have


def test_npz_length_mismatch(tmp_path: Path) -> None:
    np.savez(tmp_path / "c0.npz", x_train=np.zeros((4, 2)), y_train=np.zeros(3, int))
    with pytest.raises(DatasetError, match=r"c0\.npz.*x_train has 4 samples but y_train has 3"):
        load_client_data(f"npz:{tmp_path}/c{{client_id}}.npz", 0, 1)


def test_npz_test_length_mismatch(tmp_path: Path) -> None:
    write_client(
        tmp_path / "c0.npz",
        0,
        with_test=False,
        x_test=np.zeros((2, 4, 4, 1)),
        y_test=np.zeros(5, int),
    )
    with pytest.raises(DatasetError, match="x_test has 2 samples but y_test has 5"):
        load_client_data(f"npz:{tmp_path}/c{{client_id}}.npz", 0, 1)


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        (np.array([0.5, 1.0, 2.0]), "integer class ids, got dtype float64"),
        (np.array(["a", "b", "c"]), "integer class ids, got dtype <U1"),
        (np.eye(3, dtype=np.int64), "not one-hot"),
        (np.array([0, -1, 2]), "negative label -1"),
    ],
)
def test_npz_bad_labels(tmp_path: Path, labels: np.ndarray, fragment: str) -> None:
    np.savez(tmp_path / "c0.npz", x_train=np.zeros((3, 2)), y_train=labels)
    with pytest.raises(DatasetError) as info:
        load_client_data(f"npz:{tmp_path}/c{{client_id}}.npz", 0, 1)
    assert fragment in str(info.value) and "c0.npz" in str(info.value)


def test_npz_whole_float_labels_accepted(tmp_path: Path) -> None:
    np.savez(tmp_path / "c0.npz", x_train=np.zeros((3, 2)), y_train=np.array([0.0, 2.0, 1.0]))
    data = load_client_data(f"npz:{tmp_path}/c{{client_id}}.npz", 0, 1)
    assert data.y_train.dtype == np.int64 and data.y_train.tolist() == [0, 2, 1]


def test_npz_test_arrays_both_or_neither(tmp_path: Path) -> None:
    write_client(tmp_path / "c0.npz", 0, with_test=False, x_test=np.zeros((2, 4, 4, 1)))
    with pytest.raises(DatasetError, match="both x_test and y_test"):
        load_client_data(f"npz:{tmp_path}/c{{client_id}}.npz", 0, 1)


def test_npz_without_test_arrays_has_no_test_data(tmp_path: Path) -> None:
    write_client(tmp_path / "c0.npz", 0, with_test=False)
    data = load_client_data(f"npz:{tmp_path}/c{{client_id}}.npz", 0, 1)
    assert len(data.x_test) == 0 and data.x_test.shape[1:] == (4, 4, 1)


def test_npz_num_classes_explicit_or_inferred(tmp_path: Path) -> None:
    np.savez(tmp_path / "c0.npz", x_train=np.zeros((3, 2)), y_train=np.array([0, 1, 1]))
    np.savez(
        tmp_path / "c1.npz",
        x_train=np.zeros((3, 2)),
        y_train=np.array([0, 1, 1]),
        num_classes=np.array(10),
    )
    inferred = load_client_data(f"npz:{tmp_path}/c{{client_id}}.npz", 0, 2)
    explicit = load_client_data(f"npz:{tmp_path}/c{{client_id}}.npz", 1, 2)
    assert (inferred.num_classes, inferred.num_classes_inferred) == (2, True)
    assert (explicit.num_classes, explicit.num_classes_inferred) == (10, False)
    np.savez(
        tmp_path / "c0.npz",
        x_train=np.zeros((3, 2)),
        y_train=np.array([0, 5, 1]),
        num_classes=np.array(3),
    )
    with pytest.raises(DatasetError, match="num_classes=3 but a label is 5"):
        load_client_data(f"npz:{tmp_path}/c{{client_id}}.npz", 0, 2)


def test_npz_uint8_features_scaled(tmp_path: Path) -> None:
    x = np.full((2, 3, 3), 255, dtype=np.uint8)
    np.savez(tmp_path / "c0.npz", x_train=x, y_train=np.array([0, 1]))
    data = load_client_data(f"npz:{tmp_path}/c{{client_id}}.npz", 0, 1)
    assert data.x_train.dtype == np.float32 and float(data.x_train.max()) == 1.0


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("npz:", "names no file"),
        ("npz:gs://bucket/c{client_id}.npz", "unsupported scheme"),
        ("npz:file://otherhost/c.npz", "'otherhost'"),
    ],
)
def test_npz_bad_locations(spec: str, fragment: str) -> None:
    with pytest.raises(DatasetError, match=fragment):
        load_client_data(spec, 0, 1)


def test_npz_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "c0.npz").write_text("definitely not a zip")
    with pytest.raises(DatasetError, match=r"c0\.npz is not a readable \.npz"):
        load_client_data(f"npz:{tmp_path}/c{{client_id}}.npz", 0, 1)
    np.save(tmp_path / "c1.npz", np.zeros(3))  # a bare .npy under an .npz name
    os.replace(tmp_path / "c1.npz.npy", tmp_path / "c1.npz")
    with pytest.raises(DatasetError, match="single array"):
        load_client_data(f"npz:{tmp_path}/c{{client_id}}.npz", 1, 2)


def test_npz_dataset_spec_reads_the_file(clients_dir: Path) -> None:
    assert dataset_spec(f"npz:{clients_dir}/client-{{client_id}}.npz", 1) == ((4, 4, 1), 3)


# ----------------------------------------------------------------- process-level checks


def run_python(code: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


def test_keras_dataset_offline_gives_clear_error(tmp_path: Path) -> None:
    """A real download attempt in a fresh process (empty KERAS_HOME, so no cached file)."""
    result = run_python(
        """
        from fl_kubeflow.training.datasets import DatasetError, load_client_data
        try:
            load_client_data("mnist", 0, 2)
        except DatasetError as exc:
            print("DATASET_ERROR:", exc)
        else:
            print("ONLINE")
        """,
        env={"KERAS_HOME": str(tmp_path / "keras"), "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=180,  # the loader bounds each socket operation at 60 s
    )
    assert result.returncode == 0, result.stderr[-2000:]
    if "ONLINE" in result.stdout:
        pytest.skip("this machine reached the internet: the offline path cannot be exercised")
    message = result.stdout.split("DATASET_ERROR:", 1)[1]
    assert "'mnist'" in message
    assert "download failed" in message
    assert "offline" in message
    assert "--dataset digits" in message and "npz:" in message


def test_light_modules_do_not_import_tensorflow() -> None:
    """The server imports datasets/export/report: TensorFlow must stay out of its process."""
    result = run_python(
        """
        import sys
        import fl_kubeflow.training
        import fl_kubeflow.training.export
        import fl_kubeflow.report
        from fl_kubeflow.training import load_client_data
        load_client_data("digits", 0, 2)
        fl_kubeflow.report.learning_curves_png({"rounds": []})
        print(sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
        """,
        env={},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_digits_are_scikit_learns_read_without_importing_it() -> None:
    """The bundled table read directly equals load_digits, and sklearn stays unloaded
    (about 170 MB of a simulation worker's resident memory)."""
    result = run_python(
        """
        import sys
        import numpy as np
        from fl_kubeflow.training.datasets import load_full_dataset
        full = load_full_dataset("digits")
        print(sorted(m for m in ("sklearn", "scipy") if m in sys.modules))
        from sklearn.datasets import load_digits
        bunch = load_digits()
        assert full.x.dtype == np.float32 and full.x.shape == (1797, 8, 8), full.x.shape
        np.testing.assert_array_equal(full.x, bunch.images.astype(np.float32))
        np.testing.assert_array_equal(full.y, bunch.target)
        print("same")
        """,
        env={},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["[]", "same"]
