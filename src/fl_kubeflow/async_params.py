"""An asynchronous (FedBuff) run's options, checked, and its staleness weight.

``AsyncParams`` is what ``--mode async`` and its options make (one place for their
names, defaults and checks); docs/asynchronous.md says what each does. The pipeline's
``async_options`` string (``name=value,...``) and the CLI's ``--async-OPTION`` flags
both end here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from fl_kubeflow.checks import check_float, check_int

# Synchronous rounds (the default) or FedBuff's buffered asynchronous versions.
MODES = ("sync", "async")
SYNC, ASYNC = MODES
# Defaults: docs/asynchronous.md explains each.
STALENESS_EXPONENT = 0.5  # s(tau) = (1 + tau) ** -a: FedBuff's polynomial, a = 1/2
MAX_STALENESS = 10
SERVER_LEARNING_RATE = 1.0
# Option names (``--async-OPTION``, the pipeline's async_options "name=value,...").
OPTION_NAMES = (
    "buffer_size",
    "max_concurrency",
    "staleness_exponent",
    "max_staleness",
    "server_learning_rate",
)


@dataclass(frozen=True)
class AsyncParams:
    """The options of an asynchronous run, checked.

    Attributes:
        buffer_size: K: updates buffered before the server makes a new model version;
            None: every client (num_clients), the run's N.
        max_concurrency: Clients training at once; others wait for a slot. None: N.
        staleness_exponent: a >= 0 in the staleness weight (1 + tau) ** -a of an update
            that started from a version tau versions old; 0 weighs every update alike.
        max_staleness: Updates more than this many versions behind are refused (409).
        server_learning_rate: eta > 0: the new version is the current one plus eta times
            the buffer's staleness-weighted mean change.
    """

    buffer_size: int | None = None
    max_concurrency: int | None = None
    staleness_exponent: float = STALENESS_EXPONENT
    max_staleness: int = MAX_STALENESS
    server_learning_rate: float = SERVER_LEARNING_RATE

    def __post_init__(self) -> None:
        """Raise ValueError naming the option that is out of range."""
        # Normalised in place (int or float), so equal options compare equal.
        for name in ("buffer_size", "max_concurrency"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_int(name, getattr(self, name), minimum=1))
        object.__setattr__(
            self, "max_staleness", check_int("max_staleness", self.max_staleness, minimum=0)
        )
        object.__setattr__(
            self,
            "staleness_exponent",
            check_float("staleness_exponent", self.staleness_exponent, minimum=0.0),
        )
        object.__setattr__(
            self,
            "server_learning_rate",
            check_float(
                "server_learning_rate", self.server_learning_rate, minimum=0.0, min_inclusive=False
            ),
        )

    def check_federation(self, num_clients: int) -> None:
        """Raise ValueError if these options cannot serve ``num_clients`` clients: a buffer
        larger than the clients could never fill (each update of one version is one
        client's)."""
        if self.buffer_size is not None and self.buffer_size > num_clients:
            raise ValueError(
                f"async buffer_size={self.buffer_size} is more than the {num_clients} "
                "clients: a version takes at most one update per client"
            )

    def buffer_for(self, num_clients: int) -> int:
        """K for a run of ``num_clients`` clients."""
        return self.buffer_size if self.buffer_size is not None else num_clients

    def concurrency_for(self, num_clients: int, fraction_fit: float = 1.0) -> int:
        """How many clients may train at once in a run of ``num_clients`` whose strategy
        samples ``fraction_fit`` of them: ``max_concurrency``, else ceil(f * N)."""
        if self.max_concurrency is not None:
            return self.max_concurrency
        # Rounded first: 0.1 * 30 is 3.0000000000000004 in floating point, not 4 slots.
        return max(1, math.ceil(round(fraction_fit * num_clients, 9)))

    def to_options(self) -> dict[str, Any]:
        """The options as given (None left out): for history.json and the report."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> AsyncParams:
        """From ``name -> value`` (strings allowed); ValueError on an unknown name."""
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise ValueError(
                f"unknown async option(s) {', '.join(unknown)}; known: {', '.join(OPTION_NAMES)}"
            )
        return cls(**dict(options))


def staleness_weight(staleness: int, exponent: float) -> float:
    """FedBuff's polynomial weight of an update ``staleness`` versions old: (1 + tau) ** -a."""
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    return float((1.0 + staleness) ** -exponent)
