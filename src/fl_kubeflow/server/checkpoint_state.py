"""What a checkpoint holds of a run (server/checkpoint.py writes and reads the files).

After every round: the global model, the strategy's state, every round's record
and the evaluations. A server restarted from it carries on after that round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fl_kubeflow.server import checkpoint
from fl_kubeflow.server.evaluations import Evaluations
from fl_kubeflow.server.records import RoundRecord
from fl_kubeflow.wire import Weights


def run_checkpoint(
    closed: RoundRecord,
    earlier: Sequence[RoundRecord],
    global_weights: Weights,
    strategy_state: dict[str, Any],
    evaluations: Evaluations,
    started_at: str,
) -> checkpoint.Checkpoint:
    """The checkpoint of a run whose round ``closed`` has just been aggregated.

    Args:
        closed: The round just aggregated.
        earlier: The rounds completed before it.
        global_weights: The global model after ``closed``.
        strategy_state: The strategy's ``state_dict()``.
        evaluations: The evaluations so far.
        started_at: When the run started.
    """
    return checkpoint.Checkpoint(
        completed_round=closed.number,
        global_weights=global_weights,
        strategy_state=strategy_state,
        run_state={
            "rounds": [r.to_state() for r in [*earlier, closed]],
            "evals": evaluations.to_state(),
            "started_at": started_at,
        },
    )


@dataclass
class RestoredRun:
    """A run's records as a checkpoint saved them."""

    completed_round: int
    rounds: list[RoundRecord]
    evaluations: Evaluations
    started_at: str


def restored_run(saved: checkpoint.Checkpoint) -> RestoredRun:
    """The records in ``saved`` (its weights and strategy state are read as they are)."""
    run = saved.run_state
    return RestoredRun(
        completed_round=saved.completed_round,
        rounds=[RoundRecord.from_state(r) for r in run["rounds"]],
        evaluations=Evaluations.from_state(run["evals"]),
        started_at=run["started_at"],
    )
