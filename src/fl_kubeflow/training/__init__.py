"""The machine-learning side: datasets, partitioning, models, the Keras trainer, export.

Importing this package (or ``datasets``, ``partition``, ``export``) does not import
TensorFlow; ``KerasTrainer`` loads it on first access, from ``keras_trainer``, the only
module that imports Keras at import time. ``TrainerOptions`` and the trainer factories
(``factory``) are framework-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fl_kubeflow.training.datasets import (
    BUILTIN_DATASETS,
    ClientData,
    DatasetError,
    dataset_spec,
    load_client_data,
)
from fl_kubeflow.training.options import TrainerOptions
from fl_kubeflow.training.partition import (
    dirichlet_partition,
    iid_partition,
    parse_partition,
)

if TYPE_CHECKING:
    from fl_kubeflow.training.keras_trainer import KerasTrainer

__all__ = [
    "BUILTIN_DATASETS",
    "ClientData",
    "DatasetError",
    "KerasTrainer",
    "TrainerOptions",
    "dataset_spec",
    "dirichlet_partition",
    "iid_partition",
    "load_client_data",
    "parse_partition",
]

_LAZY = {"KerasTrainer"}


def __getattr__(name: str) -> Any:
    """Import the Keras trainer only when someone asks for it (costs seconds and ~600 MB)."""
    if name in _LAZY:
        from fl_kubeflow.training import keras_trainer

        return getattr(keras_trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
