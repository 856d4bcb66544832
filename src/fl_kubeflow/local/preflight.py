"""Checks of a local run's options that need neither TensorFlow nor a client process.

What needs the data itself (model/data shape mismatch) is checked by each client
when it builds its trainer, still before any round starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def check_trainer_options(
    trainer: str,
    dataset: str,
    partition: str,
    model: str,
    num_clients: int,
    data_locations: Sequence[str] = (),
) -> None:
    """Raise ValueError naming the bad value, as far as ``trainer`` gives the options meaning.

    A built-in trainer reads the dataset, partition and model options (the PyTorch
    trainer's ``MODULE:FACTORY`` models are checked when its clients build them); a
    user's ``MODULE:FACTORY`` trainer may read them any way it likes, so only its module
    is looked for.
    """
    from fl_kubeflow.training.factory import check_findable, is_builtin

    if is_builtin(trainer):
        check_options(
            dataset, partition, model, num_clients, data_locations, check_model=trainer == "keras"
        )
    else:
        check_findable(trainer)


def check_options(
    dataset: str,
    partition: str,
    model: str,
    num_clients: int,
    data_locations: Sequence[str] = (),
    check_model: bool = True,
) -> None:
    """Raise ValueError naming the bad value."""
    from fl_kubeflow.training.datasets import (
        BUILTIN_DATASETS,
        CLIENT_ID_FIELD,
        client_dataset,
        file_dataset,
        valid_dataset_names,
    )
    from fl_kubeflow.training.partition import parse_partition
    from fl_kubeflow.training.sources import local_path

    spec = dataset.strip()
    parsed = file_dataset(spec)
    if data_locations or parsed is not None:
        for client_id in range(num_clients):
            own = client_dataset(spec, data_locations, client_id, num_clients)
            template = file_dataset(own)
            assert template is not None  # client_dataset checked the entries
            path = local_path(template[1].replace(CLIENT_ID_FIELD, str(client_id)))
            if path is not None and not path.is_file():
                raise ValueError(
                    f"--dataset {own!r}: client {client_id}'s file {str(path)!r} does not exist"
                )
    elif spec.lower() not in BUILTIN_DATASETS:
        raise ValueError(f"--dataset {dataset!r} is unknown; valid: {valid_dataset_names()}")
    else:
        parse_partition(partition)
    if check_model and model not in ("mlp", "cnn"):
        if not model.endswith(".keras"):
            raise ValueError(f"--model {model!r} must be mlp, cnn or a path to a .keras file")
        if not Path(model).is_file():
            raise ValueError(f"--model {model!r}: no such file")
