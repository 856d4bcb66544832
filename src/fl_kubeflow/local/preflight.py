"""Checks of a local run's options that need neither TensorFlow nor a client process.

What needs the data itself (model/data shape mismatch) is checked by each client
when it builds its trainer, still before any round starts.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from pathlib import Path


def check_trainer_options(
    trainer: str, dataset: str, partition: str, model: str, num_clients: int
) -> None:
    """Raise ValueError naming the bad value, as far as ``trainer`` gives the options meaning.

    A built-in trainer reads the dataset, partition and model options; a user's
    ``MODULE:FACTORY`` may read them any way it likes, so only its module is looked for.
    """
    from fl_kubeflow.training.factory import check_findable, is_builtin

    if is_builtin(trainer):
        check_options(dataset, partition, model, num_clients)
    else:
        check_findable(trainer)


def check_options(dataset: str, partition: str, model: str, num_clients: int) -> None:
    """Raise ValueError naming the bad value."""
    from fl_kubeflow.training.datasets import (
        BUILTIN_DATASETS,
        CLIENT_ID_FIELD,
        NPZ_PREFIX,
        valid_dataset_names,
    )
    from fl_kubeflow.training.partition import parse_partition

    spec = dataset.strip()
    if spec.lower().startswith(NPZ_PREFIX):
        location = spec[len(NPZ_PREFIX) :].strip()
        if not location:
            raise ValueError(f"--dataset {dataset!r} names no file")
        for client_id in range(num_clients):
            path = _local_path(location.replace(CLIENT_ID_FIELD, str(client_id)))
            if path is not None and not path.is_file():
                raise ValueError(
                    f"--dataset {dataset!r}: client {client_id}'s file {str(path)!r} does not exist"
                )
    elif spec.lower() not in BUILTIN_DATASETS:
        raise ValueError(f"--dataset {dataset!r} is unknown; valid: {valid_dataset_names()}")
    else:
        parse_partition(partition)
    if model not in ("mlp", "cnn"):
        if not model.endswith(".keras"):
            raise ValueError(f"--model {model!r} must be mlp, cnn or a path to a .keras file")
        if not Path(model).is_file():
            raise ValueError(f"--model {model!r}: no such file")


def _local_path(location: str) -> Path | None:
    """The file a location names on this machine, or None for a remote URL."""
    lowered = location.lower()
    if lowered.startswith("file://"):
        parsed = urllib.parse.urlparse(location)
        return Path(urllib.request.url2pathname(urllib.parse.unquote(parsed.path)))
    if "://" in lowered:
        return None
    return Path(location)
