"""The machine-learning side: datasets, partitioning, models, the Keras trainer, export.

Importing this package (or ``datasets``, ``partition``, ``export``) does not import
TensorFlow or PyTorch; ``KerasTrainer`` loads TensorFlow on first access, from
``keras_trainer``, the only module that imports Keras at import time, and ``TorchTrainer``
loads PyTorch, from ``torch_trainer``. ``TrainerOptions`` and the trainer factories
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
    from fl_kubeflow.training.torch_trainer import TorchTrainer

__all__ = [
    "BUILTIN_DATASETS",
    "ClientData",
    "DatasetError",
    "KerasTrainer",
    "TorchTrainer",
    "TrainerOptions",
    "dataset_spec",
    "dirichlet_partition",
    "iid_partition",
    "load_client_data",
    "parse_partition",
]


def __getattr__(name: str) -> Any:
    """Import a framework's trainer only when someone asks for it (seconds, hundreds of MB)."""
    # Plain imports, not importlib: tests/test_import_graph.py reads these edges.
    if name == "KerasTrainer":
        from fl_kubeflow.training import keras_trainer

        return keras_trainer.KerasTrainer
    if name == "TorchTrainer":
        from fl_kubeflow.training import torch_trainer

        return torch_trainer.TorchTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
