"""A secure run's options, and the graph's degree and threshold chosen from them.

``SecAggParams`` is what ``--secure-aggregation`` and its options make (one place for
their names, defaults and checks); the server sends it to clients in the round
config (``to_config``/``from_config``). ``choose_graph`` is the one rule that picks
k and t (docs/secure_aggregation.md, "Parameters"): the server uses it to build
the round and every client to check what the server says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Defaults: docs/secure_aggregation.md explains each and the error bound they imply.
BITS = 32
BITS_CHOICES = (32, 64)
RANGE = 1.0
MAX_WEIGHT = 100_000
DROPOUT_FRACTION = 0.2
CORRUPT_FRACTION = 0.1
# Seconds each stage after the keys may take (they need no training).
STAGE_TIMEOUT = 60.0
# -log2 of the failure probabilities choose_graph accepts.
SECURITY_BITS = 40
CORRECTNESS_BITS = 20
# Fewer clients than this cannot hide one input in a sum.
MIN_CLIENTS = 3
# Option names (``--secagg-OPTION``, the pipeline's secagg_options "name=value,...").
OPTION_NAMES = ("bits", "range", "max_weight", "dropout_fraction", "corrupt_fraction", "timeout")


@dataclass(frozen=True)
class SecAggParams:
    """The options of secure aggregation, checked.

    Attributes:
        bits: 32 or 64: integers modulo 2**bits, sent as uint32 or uint64.
        range: C > 0: the largest change of one parameter a client may send; larger
            changes are clipped to [-C, C].
        max_weight: W >= 1: the largest total weight (examples, or clients under DP) of
            one round; each client's weight must be at most W too.
        dropout_fraction: delta in [0, 1): the share of a round's clients that may drop
            out after sending keys, which the threshold is chosen to survive.
        corrupt_fraction: gamma in [0, 1): the share of clients that may collude with
            the server, which the threshold is chosen to resist.
        timeout: Seconds each stage after the keys may take before it closes with the
            clients that answered.
    """

    bits: int = BITS
    range: float = RANGE
    max_weight: int = MAX_WEIGHT
    dropout_fraction: float = DROPOUT_FRACTION
    corrupt_fraction: float = CORRUPT_FRACTION
    timeout: float = STAGE_TIMEOUT

    def __post_init__(self) -> None:
        """Raise ValueError naming the option that is out of range."""
        raise NotImplementedError

    def check_federation(self, num_clients: int) -> None:
        """Raise ValueError if these options cannot serve ``num_clients`` clients:
        fewer than MIN_CLIENTS, ``num_clients * max_weight >= 2**bits`` (the weights'
        sum could wrap), or no graph (``choose_graph``) for that many."""
        raise NotImplementedError

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SecAggParams:
        """From option names (OPTION_NAMES) to values (strings are parsed); an unknown
        name is a ValueError listing the valid ones."""
        raise NotImplementedError

    def to_config(self) -> dict[str, Any]:
        """JSON-ready, for the round config's ``protocol.SECAGG_CONFIG_KEY``."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SecAggParams:
        """What ``to_config`` wrote (ValueError if it is not that)."""
        raise NotImplementedError


@dataclass(frozen=True)
class GraphParams:
    """A round's graph: every client has ``k`` neighbours; ``t`` of them rebuild a secret."""

    k: int
    t: int

    @property
    def complete(self) -> bool:
        """Whether every client neighbours every other (k = n - 1: SecAgg)."""
        raise NotImplementedError


def choose_graph(n: int, dropout_fraction: float, corrupt_fraction: float) -> GraphParams:
    """The smallest k (even, or n - 1) and the smallest secure t for n clients.

    Raises:
        ValueError: no k up to n - 1 meets both bounds (the message gives n and the
            fractions, and what would work).
    """
    raise NotImplementedError
