"""Each client's local data: built-in datasets split across clients, or its own ``.npz``.

Dataset strings (``--dataset``):

* ``digits`` (default): scikit-learn's bundled 8x8 handwritten digits (1,797
  samples), so a federation runs with no network at all.
* ``mnist``, ``fashion_mnist``, ``cifar10``: downloaded by ``keras.datasets`` (cached
  in ``~/.keras/datasets``, or ``$KERAS_HOME``). Offline this fails with a
  ``DatasetError`` that says so.
* ``npz:<location>``, ``csv:<location>``, ``parquet:<location>``: the client's own file,
  e.g. ``npz:/data/client-{client_id}.npz``, ``csv:s3://bucket/c{client_id}.csv`` or
  ``parquet:https://host/c{client_id}.parquet``. The prefix may be left out when the
  location ends in ``.npz``, ``.csv``, ``.parquet`` or ``.pq``. ``{client_id}`` is
  replaced by the client's id; a template without it makes every client read the same
  path (fine when each pod mounts its own volume there). Locations are read by
  ``sources`` (a path, ``file://``, ``http(s)://``, ``s3://``), tables by ``tables``.
* A list of such locations, one per client (``data_locations``): client ``i`` reads
  entry ``i``; see ``client_dataset``. docs/data.md has the whole story.

How built-in data is split: the whole dataset is loaded (for the keras datasets the
official train and test sets are concatenated), partitioned across ``num_clients``
(``iid`` or ``dirichlet:<alpha>``, see ``partition``), and each client then holds out
``test_fraction`` of its own shard as its local test set. Evaluation therefore
follows each client's own (possibly skewed) distribution, the same way for every
dataset, and the union of the local test sets is a held-out set the centralized
baseline can use.

The ``.npz`` arrays: ``x_train`` and ``y_train`` (required), ``x_test`` and ``y_test``
(optional, both or neither; without them the client has no test data and skips
evaluation), and an optional scalar ``num_classes``. Labels are integer class ids
(not one-hot). ``uint8`` features are scaled to [0, 1]; other numeric features are
used as float32 unchanged. Without ``num_classes`` the class count is inferred as
``max(label) + 1`` from that client's file, which can differ between clients with
skewed data: store ``num_classes`` to be safe.

A table (CSV or Parquet) holds one sample per row: a label column of integer class ids
and numeric feature columns (``TableColumns``); each client holds out ``test_fraction``
of its rows (seeded by ``seed`` and its id) as its local test set. Its class count is
inferred like an npz file's without ``num_classes``: every client's table should
contain every class.

Only the keras loader imports TensorFlow (lazily), only tables import pandas; the rest
is numpy.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fl_kubeflow import defaults
from fl_kubeflow.training.partition import DEFAULT_MIN_SIZE, partition_indices
from fl_kubeflow.training.sources import DatasetError, read_bytes
from fl_kubeflow.training.tables import TABLE_FORMATS, TableColumns, read_table

if TYPE_CHECKING:
    from fl_kubeflow.training.options import TrainerOptions

__all__ = ["DatasetError"]  # defined in sources (the lowest layer), raised from here too

NPZ_PREFIX = "npz:"
FILE_FORMATS = ("npz", *TABLE_FORMATS)
# A location's suffix gives its format when the dataset string has no ``FORMAT:`` prefix.
_SUFFIX_FORMATS = {".npz": "npz", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
CLIENT_ID_FIELD = "{client_id}"
# Bounds every socket operation of a keras download: a firewalled network that drops
# packets must not hang a client forever. Client files use ``TrainerOptions.data_timeout``.
DOWNLOAD_TIMEOUT_S = 60.0
# The digits' table inside scikit-learn's package (its load_digits reads this file).
DIGITS_CSV = Path("datasets", "data", "digits.csv.gz")


@dataclass(frozen=True)
class DatasetInfo:
    """What a built-in dataset looks like, known without loading it."""

    input_shape: tuple[int, ...]
    num_classes: int
    description: str


BUILTIN_DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo((8, 8, 1), 10, "scikit-learn 8x8 digits (1,797 samples, offline)"),
    "mnist": DatasetInfo((28, 28, 1), 10, "MNIST (70,000 samples, keras.datasets)"),
    "fashion_mnist": DatasetInfo((28, 28, 1), 10, "Fashion-MNIST (70,000, keras.datasets)"),
    "cifar10": DatasetInfo((32, 32, 3), 10, "CIFAR-10 (60,000 samples, keras.datasets)"),
}


def valid_dataset_names() -> str:
    """Human-readable list of accepted dataset strings, for error messages and --help."""
    return (
        ", ".join(BUILTIN_DATASETS)
        + ", npz:/csv:/parquet:<path, http(s):// or s3:// location with {client_id}>"
    )


@dataclass
class ClientData:
    """One client's local train and test arrays.

    ``x_*`` are float32 with shape ``(n, *input_shape)``; ``y_*`` int64 class ids.
    ``num_classes_inferred`` is True when the class count was guessed from this
    client's labels (an npz file without ``num_classes``).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    description: str
    num_classes_inferred: bool = False


@dataclass
class FullDataset:
    """A whole built-in dataset with raw features, converted to float only per shard.

    Converting MNIST/CIFAR to float32 up front would cost hundreds of MB per client
    for data the client never uses.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    scale: float
    info: DatasetInfo

    def features(self, indices: np.ndarray) -> np.ndarray:
        """Float32 features of ``indices``, scaled to [0, 1], with a channel axis."""
        x = self.x[indices].astype(np.float32) / np.float32(self.scale)
        return x.reshape((len(indices), *self.info.input_shape))


# ----------------------------------------------------------------- built-in loaders


def _digits_file() -> Path | None:
    """scikit-learn's bundled ``digits.csv.gz``, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")  # a top-level package: nothing is run
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / DIGITS_CSV
    return path if path.is_file() else None


def _load_digits() -> tuple[np.ndarray, np.ndarray, float]:
    """The digits as ``sklearn.datasets.load_digits`` gives them (images, targets).

    Read from scikit-learn's own file when it is where it has always been: importing
    scikit-learn (and SciPy with it) costs a process about 170 MB of resident memory,
    which is most of a numpy client's and a quarter of a simulation worker's, for a
    table of 1,797 rows. Its loader, if the file has moved.
    """
    path = _digits_file()
    if path is None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images, target = bunch.images, bunch.target
    else:
        with gzip.open(path, "rt") as text:
            table = np.loadtxt(text, delimiter=",")
        images, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)
    return np.asarray(images, dtype=np.float32), np.asarray(target), 16.0


def _load_keras(name: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Load a ``keras.datasets`` set; downloads are bounded by ``DOWNLOAD_TIMEOUT_S``."""
    import keras  # lazily: only these datasets need TensorFlow here

    module = getattr(keras.datasets, name)
    previous = socket.getdefaulttimeout()
    # keras.utils.get_file calls urlretrieve without a timeout; the process default
    # is the only handle. Restored right after, and loading happens before any
    # federated traffic starts.
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        (x_train, y_train), (x_test, y_test) = module.load_data()
    except Exception as exc:  # keras raises a bare Exception for URL failures
        raise DatasetError(
            f"dataset {name!r}: the keras.datasets download failed ({exc}). This machine "
            "may be offline (no internet access). Use "
            "'--dataset digits' (bundled with scikit-learn, works offline) or your own "
            "files with '--dataset npz:/path/client-{client_id}.npz'."
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)
    x = np.concatenate([x_train, x_test])
    y = np.concatenate([np.asarray(y_train).reshape(-1), np.asarray(y_test).reshape(-1)])
    return x, y, 255.0


_LOADERS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, float]]] = {
    "digits": _load_digits,
    "mnist": lambda: _load_keras("mnist"),
    "fashion_mnist": lambda: _load_keras("fashion_mnist"),
    "cifar10": lambda: _load_keras("cifar10"),
}


def _builtin_name(dataset: str) -> str:
    name = dataset.strip().lower()
    if name not in BUILTIN_DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}; valid: {valid_dataset_names()}")
    return name


def load_full_dataset(dataset: str) -> FullDataset:
    """Load a whole built-in dataset (raw features, int64 labels).

    Raises:
        DatasetError: unknown name, or a failed download.
    """
    name = _builtin_name(dataset)
    x, y, scale = _LOADERS[name]()
    return FullDataset(name, x, np.asarray(y).astype(np.int64), scale, BUILTIN_DATASETS[name])


# ----------------------------------------------------------------- splitting


def local_split(
    n: int, test_fraction: float, seed: int, client_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(train, test)`` within a client's shard of ``n`` samples.

    Seeded by ``(seed, client_id)`` so each client's split is reproducible and
    independent of the others. A positive ``test_fraction`` keeps at least one
    test and one training sample when the shard has two or more.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    n_test = round(n * test_fraction)
    if test_fraction > 0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    order = np.random.default_rng([seed, client_id]).permutation(n)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def client_splits(
    labels: np.ndarray,
    num_clients: int,
    partition: str,
    seed: int,
    test_fraction: float,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every client's ``(train, test)`` indices into the whole dataset.

    The same arguments give the same splits in every process: this is how each
    client finds its own shard, and how the centralized baseline rebuilds the
    union of the clients' test sets.
    """
    n = len(labels)
    # A client needs a few samples to train and test on; never ask more than exists.
    min_size = max(1, min(DEFAULT_MIN_SIZE, n // max(num_clients, 1)))
    shards = partition_indices(labels, num_clients, partition, seed, min_size=min_size)
    splits = []
    for client_id, shard in enumerate(shards):
        train_pos, test_pos = local_split(len(shard), test_fraction, seed, client_id)
        splits.append((shard[train_pos], shard[test_pos]))
    return splits


# ----------------------------------------------------------------- npz files


def file_dataset(spec: str) -> tuple[str, str] | None:
    """``(format, location template)`` of a file dataset string, None for a built-in name.

    ``npz:``/``csv:``/``parquet:`` prefixes name the format; without one, a location
    ending in a known suffix (``.npz``, ``.csv``, ``.parquet``, ``.pq``) does.
    """
    text = spec.strip()
    prefix, sep, rest = text.partition(":")
    if sep and prefix.lower() in FILE_FORMATS:
        if not rest.strip():
            raise DatasetError(
                f"dataset {spec!r} names no file; expected e.g. "
                f"'{prefix.lower()}:/data/client-{{client_id}}.{prefix.lower()}'"
            )
        return prefix.lower(), rest.strip()
    for suffix, file_format in _SUFFIX_FORMATS.items():
        if text.lower().endswith(suffix):
            return file_format, text
    return None


def parse_data_locations(value: str | Sequence[str]) -> tuple[str, ...]:
    """A ``data_locations`` value: a JSON list of strings (as the pipeline passes it), or a list.

    ``""`` and ``"[]"`` are the empty list.

    Raises:
        DatasetError: not a JSON list of non-empty strings.
    """
    import json

    items: object = value
    if isinstance(value, str):
        if not value.strip():
            return ()
        try:
            items = json.loads(value)
        except json.JSONDecodeError:
            items = None
    if not isinstance(items, (list, tuple)) or not all(
        isinstance(item, str) and item.strip() for item in items
    ):
        raise DatasetError(
            f"data_locations {value!r} must be a JSON list of locations, one per client, "
            'e.g. ["s3://bucket/c0.csv", "s3://bucket/c1.csv"]'
        )
    return tuple(item.strip() for item in items)


def client_dataset(
    dataset: str, data_locations: Sequence[str], client_id: int, num_clients: int
) -> str:
    """The dataset string client ``client_id`` loads: its entry of ``data_locations``, if any.

    Raises:
        DatasetError: the list does not have one location per client, or an entry is
            not a file dataset.
    """
    if not data_locations:
        return dataset
    if len(data_locations) != num_clients:
        raise DatasetError(
            f"data_locations has {len(data_locations)} entries but the run has {num_clients} "
            "clients; give exactly one location per client"
        )
    entry = str(data_locations[client_id]).strip()
    if file_dataset(entry) is None:
        raise DatasetError(
            f"data_locations[{client_id}] = {entry!r} is neither FORMAT:LOCATION "
            f"({', '.join(FILE_FORMATS)}) nor a location ending in "
            f"{', '.join(_SUFFIX_FORMATS)}"
        )
    return entry


def _open_npz(location: str, timeout: float) -> tuple[np.lib.npyio.NpzFile, str]:
    """Open ``location`` (see ``sources.read_bytes``) as an npz; return it and a label."""
    payload = read_bytes(location, timeout)
    try:
        loaded = np.load(io.BytesIO(payload), allow_pickle=False)
    except Exception as exc:  # zipfile, pickle refusal, truncated data: all "unreadable"
        raise DatasetError(f"npz file {location} is not a readable .npz archive: {exc}") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DatasetError(f"{location} holds a single array, not an .npz archive of named arrays")
    return loaded, location


def _labels(y: np.ndarray, name: str, where: str) -> np.ndarray:
    """Validate and flatten class-id labels."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise DatasetError(
            f"{where}: {name} has shape {y.shape}; expected integer class ids of shape (n,) "
            "(not one-hot)"
        )
    # Floats holding whole numbers (a common np.savez accident) are accepted as ids.
    whole_floats = y.dtype.kind == "f" and bool(np.all(np.isfinite(y) & (y == np.round(y))))
    if y.dtype.kind not in "iu" and not whole_floats:
        raise DatasetError(f"{where}: {name} must hold integer class ids, got dtype {y.dtype}")
    ints = y.astype(np.int64)
    if ints.size and ints.min() < 0:
        raise DatasetError(f"{where}: {name} has negative label {int(ints.min())}")
    return ints


def _features(x: np.ndarray, name: str, where: str) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise DatasetError(f"{where}: {name} must be numeric, got dtype {x.dtype}")
    if x.ndim < 2:
        raise DatasetError(f"{where}: {name} has shape {x.shape}; expected (n, features...)")
    if x.dtype == np.uint8:  # images: scale like the built-ins
        return x.astype(np.float32) / np.float32(255.0)
    return x.astype(np.float32)


def _client_location(spec: str, client_id: int) -> tuple[str, str]:
    """``(format, location)`` of client ``client_id``'s file."""
    parsed = file_dataset(spec)
    if parsed is None:
        raise DatasetError(
            f"dataset {spec!r} is not a file dataset; valid: {valid_dataset_names()}"
        )
    file_format, template = parsed
    return file_format, template.replace(CLIENT_ID_FIELD, str(client_id))


def load_npz_client_data(
    spec: str, client_id: int, timeout: float = defaults.DATA_TIMEOUT
) -> ClientData:
    """Read client ``client_id``'s own ``.npz`` (see the module docstring for the arrays).

    Raises:
        DatasetError: naming the file and the fault (missing file or arrays, length
            mismatch, non-integer labels, ...).
    """
    _, location = _client_location(spec, client_id)
    archive, where = _open_npz(location, timeout)
    with archive:
        keys = set(archive.files)
        missing = {"x_train", "y_train"} - keys
        if missing:
            raise DatasetError(
                f"npz file {where} lacks array(s) {sorted(missing)}; it has {sorted(keys)} "
                "(needs x_train, y_train; optional x_test, y_test, num_classes)"
            )
        if ("x_test" in keys) != ("y_test" in keys):
            raise DatasetError(f"npz file {where} must hold both x_test and y_test, or neither")
        arrays = {key: archive[key] for key in keys}
    x_train = _features(arrays["x_train"], "x_train", where)
    y_train = _labels(arrays["y_train"], "y_train", where)
    if len(x_train) == 0:
        raise DatasetError(f"npz file {where}: x_train is empty")
    if "x_test" in arrays:
        x_test = _features(arrays["x_test"], "x_test", where)
        y_test = _labels(arrays["y_test"], "y_test", where)
    else:
        x_test = np.zeros((0, *x_train.shape[1:]), np.float32)
        y_test = np.zeros((0,), np.int64)
    for xs, ys, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if len(xs) != len(ys):
            raise DatasetError(
                f"npz file {where}: x_{split} has {len(xs)} samples but y_{split} has {len(ys)}"
            )
    if x_test.shape[1:] != x_train.shape[1:]:
        raise DatasetError(
            f"npz file {where}: x_test sample shape {x_test.shape[1:]} differs from "
            f"x_train's {x_train.shape[1:]}"
        )
    top = int(max(y_train.max(), y_test.max() if y_test.size else 0)) + 1
    inferred = "num_classes" not in arrays
    if inferred:
        num_classes = top
    else:
        raw = arrays["num_classes"]
        if raw.size != 1 or raw.dtype.kind not in "iu":
            raise DatasetError(f"npz file {where}: num_classes must be one integer, got {raw!r}")
        num_classes = int(raw.reshape(()))
        if num_classes < top:
            raise DatasetError(
                f"npz file {where}: num_classes={num_classes} but a label is {top - 1}"
            )
    return ClientData(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
        description=(
            f"npz {where} (client {client_id}): {len(x_train)} train / {len(x_test)} test samples"
        ),
        num_classes_inferred=inferred,
    )


def load_table_client_data(
    spec: str,
    client_id: int,
    columns: TableColumns,
    seed: int = defaults.SEED,
    test_fraction: float = 0.2,
    timeout: float = defaults.DATA_TIMEOUT,
) -> ClientData:
    """Read client ``client_id``'s CSV or Parquet table and split off its local test rows.

    Raises:
        DatasetError: naming the location and the fault (unreachable, no label column,
            non-numeric features, non-integer labels, ...).
    """
    table_format, location = _client_location(spec, client_id)
    x, raw_labels = read_table(read_bytes(location, timeout), table_format, columns, location)
    y = _labels(raw_labels, f"label column {columns.label!r}", f"{table_format} {location}")
    train, test = local_split(len(y), test_fraction, seed, client_id)
    return ClientData(
        x_train=x[train],
        y_train=y[train],
        x_test=x[test],
        y_test=y[test],
        num_classes=int(y.max()) + 1,
        input_shape=(int(x.shape[1]),),
        description=(
            f"{table_format} {location} (client {client_id}): {len(train)} train / "
            f"{len(test)} test rows, {x.shape[1]} features"
        ),
        num_classes_inferred=True,
    )


# ----------------------------------------------------------------- entry points


def load_client_data(
    dataset: str,
    client_id: int,
    num_clients: int,
    partition: str = "iid",
    seed: int = 0,
    test_fraction: float = 0.2,
    columns: TableColumns | None = None,
    timeout: float = defaults.DATA_TIMEOUT,
) -> ClientData:
    """This client's train/test data for a dataset string.

    Built-ins are partitioned (``partition``, ``seed``) and split locally
    (``test_fraction``); an ``npz:`` client reads only its own file, unsplit; a table
    client reads its own table and splits it locally.

    Args:
        dataset: ``digits``, ``mnist``, ``fashion_mnist``, ``cifar10``, or a file dataset
            (``npz:``/``csv:``/``parquet:`` location, see ``file_dataset``).
        client_id: this client's index, ``0 <= client_id < num_clients``.
        num_clients: how many clients share the built-in dataset.
        partition: ``iid`` or ``dirichlet:<alpha>``.
        seed: partition and split seed; every client must use the same one.
        test_fraction: share of the shard (or table) held out for local evaluation.
        columns: a table's label and feature columns (default: ``label`` and the rest).
        timeout: seconds each remote read of a client file may take per attempt.

    Raises:
        DatasetError: unknown or unloadable dataset.
        ValueError: inconsistent client_id/num_clients/partition/test_fraction.
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not 0 <= client_id < num_clients:
        raise ValueError(f"client_id must be in [0, {num_clients}), got {client_id}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    parsed = file_dataset(dataset)
    if parsed is not None and parsed[0] == "npz":
        return load_npz_client_data(dataset, client_id, timeout)
    if parsed is not None:
        return load_table_client_data(
            dataset, client_id, columns or TableColumns(), seed, test_fraction, timeout
        )
    full = load_full_dataset(dataset)
    splits = client_splits(full.y, num_clients, partition, seed, test_fraction)
    return shard_data(full, splits[client_id], client_id, num_clients, partition)


def shard_data(
    full: FullDataset,
    split: tuple[np.ndarray, np.ndarray],
    client_id: int,
    num_clients: int,
    partition: str,
) -> ClientData:
    """One client's ``ClientData`` from a loaded built-in dataset and its ``client_splits`` entry.

    Loading the dataset and splitting it once serves every client of a process (a
    simulation worker hosts many); a client process calls ``load_client_data``.
    """
    train_idx, test_idx = split
    return ClientData(
        x_train=full.features(train_idx),
        y_train=full.y[train_idx],
        x_test=full.features(test_idx),
        y_test=full.y[test_idx],
        num_classes=full.info.num_classes,
        input_shape=full.info.input_shape,
        description=(
            f"{full.name}, client {client_id} of {num_clients}, {partition}: "
            f"{len(train_idx)} train / {len(test_idx)} test samples"
        ),
    )


def load_trainer_data(options: TrainerOptions) -> ClientData:
    """The data a trainer built from ``options`` trains on: the one entry point for trainers."""
    return load_client_data(
        client_dataset(
            options.dataset, options.data_locations, options.client_id, options.num_clients
        ),
        options.client_id,
        options.num_clients,
        partition=options.partition,
        seed=options.seed,
        test_fraction=options.test_fraction,
        columns=TableColumns.parse(options.label_column, options.feature_columns),
        timeout=options.data_timeout,
    )


def dataset_spec(dataset: str, client_id: int = 0) -> tuple[tuple[int, ...], int]:
    """``(input_shape, num_classes)`` of a dataset string.

    Built-ins answer from a table without downloading; ``npz:`` reads client
    ``client_id``'s file. Tables are not read here (a server has no credentials for
    them): ``export`` takes their shapes from the weights.
    """
    parsed = file_dataset(dataset)
    if parsed is not None and parsed[0] == "npz":
        data = load_npz_client_data(dataset, client_id)
        return data.input_shape, data.num_classes
    if parsed is not None:
        raise DatasetError(
            f"dataset {dataset!r} is a table: its shapes come from the weights, not the data"
        )
    info = BUILTIN_DATASETS[_builtin_name(dataset)]
    return info.input_shape, info.num_classes
