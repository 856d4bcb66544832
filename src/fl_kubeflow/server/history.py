"""The run's records as clients and files see them: /v1/status and history.json.

Pure functions of a ``RunView``, the run's state at one moment, which the
Federation takes under its lock (docs/protocol.md and report.py read these
shapes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fl_kubeflow.async_params import ASYNC, SYNC
from fl_kubeflow.metrics import WeightedMetrics
from fl_kubeflow.protocol import Phase
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.records import ClientRecord, RoundRecord


@dataclass(frozen=True)
class RunView:
    """What the records are made of: the run's state, read under its lock.

    Attributes:
        phase: Where the run is.
        round: The current round (0 before the first).
        config: The run's configuration.
        clients: Every client that joined, by id.
        current: The round open for updates, if any.
        rounds: The completed rounds, in order.
        evaluations: The weighted evaluation metrics, by round.
        error: Why the run failed, if it did.
        started_at: When the run started (ISO 8601).
        finished_at: When it finished or failed, if it has.
        strategy: The strategy's name.
        strategy_options: The options it runs with.
    """

    phase: Phase
    round: int
    config: ServerConfig
    clients: Mapping[str, ClientRecord]
    current: RoundRecord | None
    rounds: Sequence[RoundRecord]
    evaluations: Mapping[int, WeightedMetrics]
    error: str | None
    started_at: str
    finished_at: str | None
    strategy: str
    strategy_options: dict[str, Any]


def status(view: RunView, since: int | None = None) -> dict[str, Any]:
    """A snapshot of the run; with ``since``, also the records of rounds >= since."""
    current = view.current
    return {
        "phase": view.phase.value,
        "mode": mode(view),
        "round": view.round,
        "num_rounds": view.config.num_rounds,
        "num_clients": view.config.num_clients,
        "min_clients": view.config.quorum,
        "joined": sorted(view.clients),
        "active": sorted(c for c, s in view.clients.items() if s.active),
        "revoked": revoked(view),
        "submitted": sorted(current.contributors) if current else [],
        **secagg_stage(view),
        "completed_rounds": len(view.rounds),
        "error": view.error,
        "last_round": round_record(view, view.rounds[-1]) if view.rounds else None,
        "last_evaluation": last_evaluation(view),
        **({"rounds": records(view, since)} if since is not None else {}),
    }


def history(view: RunView) -> dict[str, Any]:
    """Everything that happened, as written to history.json."""
    asynchronous = view.config.asynchronous
    return {
        "status": view.phase.value,
        "mode": mode(view),
        **({"async": asynchronous.to_options()} if asynchronous is not None else {}),
        "error": view.error,
        "num_rounds": view.config.num_rounds,
        "num_clients": view.config.num_clients,
        "min_clients": view.config.quorum,
        "strategy": view.strategy,
        "strategy_options": view.strategy_options,
        "clients": sorted(view.clients),
        "revoked": revoked(view),
        "started_at": view.started_at,
        "finished_at": view.finished_at,
        "rounds": records(view),
    }


def mode(view: RunView) -> str:
    """``"sync"`` rounds or FedBuff's ``"async"`` versions (docs/asynchronous.md)."""
    return SYNC if view.config.asynchronous is None else ASYNC


def revoked(view: RunView) -> list[str]:
    """The clients whose credential was revoked during the run."""
    return sorted(c for c, s in view.clients.items() if s.revoked)


def records(view: RunView, since: int = 0) -> list[dict[str, Any]]:
    """Round 0 (the initial model's evaluation) and every completed round, from ``since``."""
    found: list[dict[str, Any]] = []
    if since <= 0:
        found.append({"round": 0, "evaluate": eval_record(view, 0)})
    found += [round_record(view, r) for r in view.rounds if r.number >= since]
    return found


def last_evaluation(view: RunView) -> dict[str, Any] | None:
    """The latest round's evaluation, with its round number; None before any."""
    if not view.evaluations:
        return None
    number = max(view.evaluations)
    return {"round": number, **eval_record(view, number)}  # type: ignore[dict-item]


def eval_record(view: RunView, number: int) -> dict[str, Any] | None:
    """The evaluation of the global model after round ``number``; None if nobody sent one."""
    agg = view.evaluations.get(number)
    if agg is None:
        return None
    return {
        "num_clients": agg.num_clients,
        "num_examples": agg.num_examples,
        "metrics": agg.mean(),
    }


def round_record(view: RunView, record: RoundRecord) -> dict[str, Any]:
    """One completed round, as history.json shows it."""
    return {
        "round": record.number,
        "started_at": record.started_at,
        "duration_s": record.duration_s,
        "contributors": sorted(record.contributors),
        "timed_out": record.timed_out,
        "refused": record.refused,
        "num_examples": record.num_examples,
        "train": record.train.mean(),
        "evaluate": eval_record(view, record.number),
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
        "sampled": record.sampled,
        **({"strategy": record.strategy_report} if record.strategy_report else {}),
        **({"secure_aggregation": record.secure_report} if record.secure_report else {}),
        **record.buffered(),
    }


def secagg_stage(view: RunView) -> dict[str, Any]:
    """A secure run's ``secagg_stage``: the open round's stage (None between rounds);
    nothing in a plain run."""
    if view.config.secure_aggregation is None:
        return {}
    secure = view.current.secure if view.current is not None else None
    return {"secagg_stage": secure.stage.value if secure is not None else None}
