"""What a run keeps about its clients, its rounds and its requests.

Plain records, no lock: the Federation reads and changes them under its own.
A round's record is what history.json shows of it and what a checkpoint saves
(``to_state``/``from_state``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from fl_kubeflow import protocol
from fl_kubeflow.metrics import WeightedMetrics
from fl_kubeflow.server.errors import BadRequest

if TYPE_CHECKING:
    from fl_kubeflow.server.secure_round import SecureRound
    from fl_kubeflow.strategies import RoundAggregator

# What protocol.valid_client_id accepts, in words for refusals.
CLIENT_ID_RULE = (
    "1-63 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
)
# Refusals kept per round in the history: a misbehaving client must not grow it forever.
MAX_REFUSALS_KEPT = 100
# Client ids a log line or a failure's reason names before it counts the rest: a run of
# 1,000 clients must not write 1,000 ids into one line (history.json lists them all).
MAX_IDS_NAMED = 20


def now_iso() -> str:
    """The time now, as the history writes it (UTC, milliseconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def summarise_ids(client_ids: Iterable[str], limit: int = MAX_IDS_NAMED) -> str:
    """``client_ids`` sorted, as a list's repr if there are at most ``limit``; else the
    first ``limit`` and how many more: "['a', 'b'] and 998 more (1000 in all)"."""
    ids = sorted(client_ids)
    if len(ids) <= limit:
        return repr(ids)
    return f"{ids[:limit]!r} and {len(ids) - limit} more ({len(ids)} in all)"


def check_client_id(client_id: str) -> str:
    """``client_id`` if it is a whole valid id (protocol.valid_client_id); else 400."""
    if not protocol.valid_client_id(client_id):
        raise BadRequest(f"client id {client_id!r} must be {CLIENT_ID_RULE}")
    return client_id


@dataclass
class ClientRecord:
    """A client that joined: whether it takes part, has left (or was revoked), has heard
    how the run ended."""

    joined_at: float
    active: bool = True
    left: bool = False
    told_end: bool = False
    revoked: bool = False


@dataclass
class RoundRecord:
    """One round, from its opening to its aggregate (and then in the history)."""

    number: int
    started_mono: float
    started_at: str
    aggregator: RoundAggregator | None
    # Who was asked to train (client sampling) and to evaluate the model before it.
    sampled: list[str] = field(default_factory=list)
    eval_sampled: list[str] = field(default_factory=list)
    train: WeightedMetrics = field(default_factory=WeightedMetrics)
    # None: not known (a secure round weighting clients uniformly keeps counts private).
    num_examples: int | None = 0
    strategy_report: dict[str, Any] = field(default_factory=dict)
    # Each contributor's example count; None in a secure round, where counts are private.
    contributors: dict[str, int | None] = field(default_factory=dict)
    # Each contributor's updates.digest, to tell an honest resend from a different update.
    # Not saved in checkpoints: a restored round compares resends by example count only.
    digests: dict[str, bytes] = field(default_factory=dict)
    # Clients whose update is being folded in now (outside the lock).
    folding: set[str] = field(default_factory=set)
    refused: list[dict[str, str]] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    bytes_in: int = 0
    bytes_out: int = 0
    duration_s: float | None = None
    # A secure round's stages while it is open (server/secure_round.py), and its
    # history record once unmasked.
    secure: SecureRound | None = None
    secure_report: dict[str, Any] = field(default_factory=dict)
    # An asynchronous version's updates (docs/asynchronous.md): the version each started
    # from and how many versions behind the newest it was when counted. Set when an
    # update takes its place in the buffer, so only contributors' entries are kept.
    base_versions: dict[str, int] = field(default_factory=dict)
    staleness: dict[str, int] = field(default_factory=dict)
    # ``sampled`` and ``eval_sampled`` as sets, made again when a list is replaced
    # (see ``was_sampled``).
    _sets: dict[str, tuple[list[str], int, frozenset[str]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def was_sampled(self, client_id: str, evaluate: bool = False) -> bool:
        """Whether ``client_id`` is in ``sampled`` (``evaluate``: ``eval_sampled``).

        Asked a few times for each request; ``in`` on the list is linear, which at
        N = 1,000 made a round's requests quadratic. The set is made again whenever
        the list is replaced or changes length.
        """
        name = "eval_sampled" if evaluate else "sampled"
        members: list[str] = getattr(self, name)
        kept = self._sets.get(name)
        if kept is None or kept[0] is not members or kept[1] != len(members):
            kept = (members, len(members), frozenset(members))
            self._sets[name] = kept
        return client_id in kept[2]

    def refuse(self, client_id: str, reason: str) -> None:
        """Note a refused request of this round (up to MAX_REFUSALS_KEPT)."""
        if len(self.refused) < MAX_REFUSALS_KEPT:
            self.refused.append({"client": client_id, "reason": reason})

    def buffered(self) -> dict[str, dict[str, int]]:
        """An asynchronous version's ``base_versions`` and ``staleness`` of its
        contributors ({} in a synchronous round)."""
        if not self.base_versions:
            return {}
        return {
            "staleness": {c: self.staleness[c] for c in sorted(self.contributors)},
            "base_versions": {c: self.base_versions[c] for c in sorted(self.contributors)},
        }

    def to_state(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "started_at": self.started_at,
            "sampled": self.sampled,
            "strategy_report": self.strategy_report,
            "train": self.train.to_state(),
            "num_examples": self.num_examples,
            "contributors": self.contributors,
            "refused": self.refused,
            "timed_out": self.timed_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration_s": self.duration_s,
            **({"secure_aggregation": self.secure_report} if self.secure_report else {}),
            **self.buffered(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RoundRecord:
        return cls(
            number=int(state["number"]),
            started_mono=0.0,
            started_at=state["started_at"],
            aggregator=None,
            sampled=list(state.get("sampled", [])),
            strategy_report=dict(state.get("strategy_report", {})),
            train=WeightedMetrics.from_state(state["train"]),
            num_examples=None if state["num_examples"] is None else int(state["num_examples"]),
            contributors=dict(state["contributors"]),
            refused=list(state["refused"]),
            timed_out=list(state["timed_out"]),
            bytes_in=int(state["bytes_in"]),
            bytes_out=int(state["bytes_out"]),
            duration_s=state["duration_s"],
            secure_report=dict(state.get("secure_aggregation", {})),
            base_versions={c: int(b) for c, b in state.get("base_versions", {}).items()},
            staleness={c: int(t) for c, t in state.get("staleness", {}).items()},
        )


@dataclass
class Counters:
    """Request totals since the server started, for /metrics."""

    updates_accepted: int = 0
    updates_duplicate: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    # Refused requests by reason (an error code, or a finer reason such as stale_round).
    rejections: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejections[reason] = self.rejections.get(reason, 0) + 1

    def copy(self) -> Counters:
        """A copy that later requests do not change."""
        return replace(self, rejections=dict(self.rejections))
