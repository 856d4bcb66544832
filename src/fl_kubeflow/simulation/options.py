"""What a simulation is made of: the options of ``fl-kubeflow simulate``, also read by workers."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fl_kubeflow import defaults

NUMPY = "numpy"
TRAINERS = (NUMPY, "keras", "torch")
DEFAULT_PARAMS = 100_000


@dataclass
class SimulationOptions:
    """Everything a simulation takes; ``fl-kubeflow simulate --help`` explains each field."""

    clients: int = 100
    rounds: int = defaults.NUM_ROUNDS
    fraction_fit: float = 0.1
    fraction_evaluate: float | None = None
    min_clients: int = 1
    trainer: str = NUMPY
    params: int = DEFAULT_PARAMS
    dataset: str = defaults.DATASET
    partition: str = defaults.PARTITION
    model: str = defaults.MODEL
    local_epochs: int = defaults.LOCAL_EPOCHS
    batch_size: int = defaults.BATCH_SIZE
    learning_rate: float = defaults.LEARNING_RATE
    optimizer: str = defaults.OPTIMIZER
    seed: int = defaults.SEED
    workers: int = 1
    strategy: str = defaults.STRATEGY
    strategy_options: dict[str, Any] = field(default_factory=dict)
    output: Path = Path("runs/simulate")
    join_timeout: float = defaults.JOIN_TIMEOUT
    round_timeout: float = defaults.ROUND_TIMEOUT
    poll_wait: float = 30.0
    timeout: float = defaults.LOCAL_RUN_TIMEOUT

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        if self.trainer not in TRAINERS:
            raise ValueError(f"trainer must be one of {', '.join(TRAINERS)}, got {self.trainer!r}")
        if self.clients < 1 or self.rounds < 1 or self.params < 1:
            raise ValueError("clients, rounds and params must be >= 1")
        if not 1 <= self.workers <= self.clients:
            raise ValueError(f"workers must be in [1, clients={self.clients}], got {self.workers}")
        if not 1 <= self.min_clients <= self.clients:
            raise ValueError(
                f"min_clients must be in [1, clients={self.clients}], got {self.min_clients}"
            )

    def server_strategy_options(self) -> dict[str, Any]:
        """The strategy's options with the sampling fractions this simulation asks for."""
        options = {**self.strategy_options, "fraction_fit": self.fraction_fit}
        if self.fraction_evaluate is not None:
            options["fraction_evaluate"] = self.fraction_evaluate
        return options

    def client_ids(self, worker: int) -> list[int]:
        """The virtual clients ``worker`` hosts: every ``workers``-th id, so that each
        worker gets its share of a round's sample."""
        return list(range(worker, self.clients, self.workers))

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["output"] = str(self.output)
        return values

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> SimulationOptions:
        values = json.loads(path.read_text())
        values["output"] = Path(values["output"])
        return cls(**values)
