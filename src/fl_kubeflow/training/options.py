"""``TrainerOptions``: what every built-in trainer (Keras, PyTorch) builds its model and data from.

Framework-free, so a trainer factory, the CLI and the KFP client task can make one
without importing TensorFlow or PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fl_kubeflow import defaults

OPTIMIZERS = ("sgd", "adam")


@dataclass
class TrainerOptions:
    """Everything a client needs to build its model and data.

    ``optimizer`` is ``sgd`` (with ``momentum``; 0 for plain SGD) or ``adam``.
    ``seed`` fixes the partition, the local split, the initial weights and the
    per-round shuffles; all clients of a federation must share ``seed``,
    ``dataset``, ``partition``, ``num_clients`` and ``model``.

    ``data_locations``, when not empty, has one file dataset per client (client ``i``
    reads entry ``i``) and replaces ``dataset``; ``label_column`` and
    ``feature_columns`` (comma-separated, empty for every other column) pick a table's
    columns; ``data_timeout`` bounds each remote read of the client's file
    (docs/data.md).
    """

    dataset: str = defaults.DATASET
    partition: str = defaults.PARTITION
    model: str = defaults.MODEL
    client_id: int = 0
    num_clients: int = 1
    local_epochs: int = defaults.LOCAL_EPOCHS
    batch_size: int = defaults.BATCH_SIZE
    learning_rate: float = defaults.LEARNING_RATE
    optimizer: str = defaults.OPTIMIZER
    momentum: float = 0.9
    seed: int = defaults.SEED
    test_fraction: float = 0.2
    data_locations: tuple[str, ...] = field(default_factory=tuple)
    label_column: str = defaults.LABEL_COLUMN
    feature_columns: str = defaults.FEATURE_COLUMNS
    data_timeout: float = defaults.DATA_TIMEOUT

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        if self.local_epochs < 1:
            raise ValueError(f"local_epochs must be >= 1, got {self.local_epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not self.label_column.strip():
            raise ValueError("label_column must name a column")
        if not (math.isfinite(self.data_timeout) and self.data_timeout > 0):
            raise ValueError(f"data_timeout must be > 0, got {self.data_timeout}")
        if self.data_locations and len(self.data_locations) != self.num_clients:
            raise ValueError(
                f"data_locations has {len(self.data_locations)} entries for {self.num_clients} "
                "clients; give exactly one location per client"
            )
