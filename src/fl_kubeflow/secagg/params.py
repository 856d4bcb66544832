"""A secure run's options, and the graph's degree and threshold chosen from them.

``SecAggParams`` is what ``--secure-aggregation`` and its options make (one place for
their names, defaults and checks); the server sends it to clients in the round
config (``to_config``/``from_config``). ``choose_graph`` is the one rule that picks
k and t (docs/secure_aggregation.md, "Parameters"): the server uses it to build
the round and every client to check what the server says.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
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
        # Normalised in place (int for the integer options, float for the rest), so
        # equal options compare equal and to_config writes one spelling of each.
        for name, value in (
            ("bits", _integer("bits", self.bits)),
            ("max_weight", _integer("max_weight", self.max_weight)),
            ("range", _number("range", self.range)),
            ("dropout_fraction", _number("dropout_fraction", self.dropout_fraction)),
            ("corrupt_fraction", _number("corrupt_fraction", self.corrupt_fraction)),
            ("timeout", _number("timeout", self.timeout)),
        ):
            object.__setattr__(self, name, value)
        if self.bits not in BITS_CHOICES:
            raise ValueError(f"secagg bits must be one of {BITS_CHOICES}, got {self.bits}")
        if not self.range > 0:
            raise ValueError(f"secagg range must be > 0, got {self.range}")
        if not 1 <= self.max_weight < 2 ** (self.bits - 1):
            raise ValueError(
                f"secagg max_weight must be in 1..2**{self.bits - 1} - 1, got {self.max_weight}"
            )
        for name in ("dropout_fraction", "corrupt_fraction"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"secagg {name} must be in [0, 1), got {value}")
        if not self.timeout > 0:
            raise ValueError(f"secagg timeout must be > 0 seconds, got {self.timeout}")

    def check_federation(self, num_clients: int) -> None:
        """Raise ValueError if these options cannot serve ``num_clients`` clients:
        fewer than MIN_CLIENTS, ``num_clients * max_weight >= 2**bits`` (the weights'
        sum could wrap), or no graph (``choose_graph``) for that many."""
        if num_clients < MIN_CLIENTS:
            raise ValueError(
                f"secure aggregation needs at least {MIN_CLIENTS} clients per round "
                f"(a sum of fewer does not hide one input), got {num_clients}"
            )
        if num_clients * self.max_weight >= 2**self.bits:
            raise ValueError(
                f"secagg max_weight {self.max_weight} times {num_clients} clients must be "
                f"below 2**{self.bits} (the weights' sum could wrap): lower max_weight "
                "or use bits=64"
            )
        choose_graph(num_clients, self.dropout_fraction, self.corrupt_fraction)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SecAggParams:
        """From option names (OPTION_NAMES) to values (strings are parsed); an unknown
        name is a ValueError listing the valid ones."""
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise ValueError(
                f"unknown secagg option(s) {', '.join(unknown)}; valid: {', '.join(OPTION_NAMES)}"
            )
        values = {name: _parse(name, value) for name, value in options.items()}
        return cls(**values)

    def to_config(self) -> dict[str, Any]:
        """JSON-ready, for the round config's ``protocol.SECAGG_CONFIG_KEY``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SecAggParams:
        """What ``to_config`` wrote (ValueError if it is not that)."""
        if not isinstance(config, Mapping):
            raise ValueError(f"secagg config must be an object, got {type(config).__name__}")
        # "weighting" travels next to the options (the strategy's); the client reads it.
        names = set(config) - {"weighting"}
        if names != set(OPTION_NAMES):
            raise ValueError(
                f"secagg config must have exactly {', '.join(OPTION_NAMES)}, got "
                f"{', '.join(sorted(map(str, names)))}"
            )
        return cls(**{name: config[name] for name in OPTION_NAMES})


@dataclass(frozen=True)
class GraphParams:
    """A round's graph: every client has ``k`` neighbours; ``t`` of them rebuild a secret.

    ``n`` is the round's number of clients (0 if not given, when ``complete`` is
    False); it takes no part in equality, so ``GraphParams(k, t)`` equals what
    ``choose_graph`` returns for the same k and t.
    """

    k: int
    t: int
    n: int = field(default=0, compare=False)

    @property
    def complete(self) -> bool:
        """Whether every client neighbours every other (k = n - 1: SecAgg)."""
        return self.n > 0 and self.k == self.n - 1


def choose_graph(n: int, dropout_fraction: float, corrupt_fraction: float) -> GraphParams:
    """The smallest k (even, or n - 1) and the smallest secure t for n clients.

    With D = floor(dropout_fraction * n) dropped and C = floor(corrupt_fraction * n)
    corrupt clients, a client's k neighbours are a uniform k-subset of the n - 1
    others, so the number of dropped (corrupt) ones among them is hypergeometric.
    ``t`` is the smallest with n * P(corrupt >= 2t - k) <= 2**-SECURITY_BITS; ``k``
    the smallest for which that ``t`` also has n * P(dropped > k - t) <=
    2**-CORRECTNESS_BITS. Exact rational arithmetic (math.comb): no rounding.

    Raises:
        ValueError: no k up to n - 1 meets both bounds (the message gives n and the
            fractions, and what would work).
    """
    if n < 2:
        raise ValueError(f"a secure round needs at least 2 clients, got {n}")
    for name, value in (
        ("dropout_fraction", dropout_fraction),
        ("corrupt_fraction", corrupt_fraction),
    ):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    dropped = math.floor(dropout_fraction * n)
    corrupt = math.floor(corrupt_fraction * n)
    found = _choose(n, dropped, corrupt)
    if found is None:
        # The complete graph is the most forgiving: C < 2t - (n - 1) and t <= n - 1 - D
        # have a solution exactly when C + 2D < n - 1.
        raise ValueError(
            f"no SecAgg+ graph for {n} clients with dropout_fraction {dropout_fraction} "
            f"({dropped} may drop) and corrupt_fraction {corrupt_fraction} ({corrupt} may "
            f"collude): even the complete graph needs corrupt + 2 * dropped < n - 1 "
            f"({corrupt} + 2 * {dropped} >= {n - 1}); lower the fractions or add clients"
        )
    return GraphParams(k=found[0], t=found[1], n=n)


@lru_cache(maxsize=256)
def _choose(n: int, dropped: int, corrupt: int) -> tuple[int, int] | None:
    """(k, t) for n clients, ``dropped`` drop-outs and ``corrupt`` colluders, or None."""
    others = n - 1
    degrees = [*range(2, others + 1, 2)]
    if others % 2:
        degrees.append(others)
    for k in degrees:
        # Tails of the number of corrupt / dropped neighbours, as exact fractions of
        # comb(others, k): tail[a] = #subsets with at least a of them.
        secure = _tails(others, corrupt, k)
        survive = _tails(others, dropped, k)
        total = math.comb(others, k)
        # Smallest t with n * P(corrupt >= 2t - k) <= 2^-40: 2t - k must exceed k.
        for t in range(k // 2 + 1, k + 1):
            if n * secure(2 * t - k) << SECURITY_BITS <= total:
                # Most drop-outs tolerated at this t: P(dropped > k - t) small enough?
                if n * survive(k - t + 1) << CORRECTNESS_BITS <= total:
                    return k, t
                break
    return None


def _tails(population: int, marked: int, draws: int) -> Callable[[int], int]:
    """a -> how many ``draws``-subsets of ``population`` hold at least ``a`` of ``marked``."""
    counts = [
        math.comb(marked, x) * math.comb(population - marked, draws - x)
        for x in range(min(marked, draws) + 1)
    ]

    def tail(a: int) -> int:
        return sum(counts[max(a, 0) :])

    return tail


def _integer(name: str, value: object) -> int:
    """``value`` as an int (an integral float too); ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"secagg {name} must be an integer, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"secagg {name} must be an integer, got {value!r}")
    return int(value)


def _number(name: str, value: object) -> float:
    """``value`` as a finite float; ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"secagg {name} must be a finite number, got {value!r}")
    return float(value)


def _parse(name: str, value: object) -> object:
    """An option's value from its text (``--secagg-NAME`` or ``name=value``)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        return int(text) if name in ("bits", "max_weight") else float(text)
    except ValueError:
        kind = "an integer" if name in ("bits", "max_weight") else "a number"
        raise ValueError(f"secagg {name} must be {kind}, got {value!r}") from None
