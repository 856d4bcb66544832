"""An asynchronous run's history (docs/asynchronous.md) in report.html, the KFP Markdown
summary and the local run's terminal table: versions, contributors and their staleness;
and the straggler wrapper (client/slowdown.py)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from fl_kubeflow.client.slowdown import SlowTrainer, slow_down
from fl_kubeflow.client.trainer import EvaluateResult, FitResult
from fl_kubeflow.report import render_report, staleness_line
from tests.test_report import FINISHED, evaluate


def version(number: int, staleness: dict[str, int], accuracy: float) -> dict[str, Any]:
    return {
        "round": number,
        "duration_s": 0.5,
        "contributors": sorted(staleness),
        "staleness": staleness,
        "base_versions": {c: number - 1 - tau for c, tau in staleness.items()},
        "refused": [],
        "num_examples": 100 * len(staleness),
        "train": {"loss": 1.0 - accuracy, "accuracy": accuracy},
        "evaluate": evaluate(accuracy, 1.0 - accuracy),
    }


ASYNC: dict[str, Any] = {
    **FINISHED,
    "mode": "async",
    "async": {"buffer_size": 2, "staleness_exponent": 0.5, "max_staleness": 10},
    "num_rounds": 2,
    "rounds": [
        {"round": 0, "evaluate": evaluate(0.1, 2.3)},
        version(1, {"0": 0, "1": 0}, 0.6),
        version(2, {"2": 1, "10": 0}, 0.8),
    ],
}


def test_an_async_report_shows_versions_and_each_contributors_staleness() -> None:
    page = render_report(ASYNC, {})
    assert (
        "<th>mode</th><td>FedBuff (buffer_size=2, staleness_exponent=0.5, max_staleness=10)" in page
    )
    assert "<th>versions completed</th><td>2 of 2</td>" in page
    assert "<h2>Versions</h2>" in page and "<th>version</th>" in page
    assert "<h2>Staleness</h2>" in page
    # version, updates, mean, max, then each client (numeric ids in numeric order).
    assert (
        "<tr><td>1</td><td>2</td><td>0.00</td><td>0</td><td>0: 0 (v0), 1: 0 (v0)</td></tr>" in page
    )
    assert (
        "<tr><td>2</td><td>2</td><td>0.50</td><td>1</td><td>2: 1 (v0), 10: 0 (v1)</td></tr>" in page
    )
    # A synchronous history keeps its words and has no such table.
    plain = render_report(FINISHED, {})
    assert "Staleness" not in plain and "<h2>Rounds</h2>" in plain and "FedBuff" not in plain


def test_the_kfp_summary_of_an_async_run_tabulates_staleness_per_version() -> None:
    from fl_kubeflow.tasks.server_task import history_metrics, markdown_summary

    text = markdown_summary(ASYNC, history_metrics(ASYNC))
    assert "| mode | FedBuff (buffer_size=2, staleness_exponent=0.5, max_staleness=10) |" in text
    assert "| versions completed | 2 of 2 |" in text
    assert "| final eval accuracy (version 2) | 0.8000 |" in text
    assert "| 2 | 0.50 | 1 | 2: 1 (v0), 10: 0 (v1) |" in text
    plain = markdown_summary(FINISHED, history_metrics(FINISHED))
    assert "Staleness" not in plain and "| rounds completed |" in plain


def test_the_local_runs_table_shows_staleness_under_each_version() -> None:
    from fl_kubeflow.local.runner import summary_lines

    lines = summary_lines(ASYNC)
    assert lines[0].startswith("version  clients  examples")
    assert lines[2].split()[:3] == ["1", "2", "200"]
    assert lines[3].strip() == "staleness 0: 0 (v0), 1: 0 (v0); mean 0.00, max 0"
    assert lines[5].strip() == "staleness 2: 1 (v0), 10: 0 (v1); mean 0.50, max 1"
    # The synchronous table is as it was.
    assert summary_lines(FINISHED)[0].startswith("round  clients  examples")
    assert staleness_line(FINISHED["rounds"][1]) is None


def test_local_progress_names_versions_and_their_staleness() -> None:
    from fl_kubeflow.local.progress import ProgressReporter

    shown: list[str] = []
    reporter = ProgressReporter("http://127.0.0.1:1", 3, 2, shown.append)
    reporter._show({"phase": "running", "mode": "async", "rounds": ASYNC["rounds"]}, final=True)
    assert "evaluation of the version-0 model on 3 clients" in shown[0]
    assert shown[1].startswith("version   1/2: 2 clients, 200 examples")
    assert shown[2].strip() == "staleness 0: 0 (v0), 1: 0 (v0); mean 0.00, max 0"
    assert "evaluation of the version-1 model on 3 clients" in "\n".join(shown)


class Sleepy:
    """A trainer whose fit takes ``seconds`` of wall time (a real sleep)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.evaluated = 0

    def initial_weights(self) -> dict[str, np.ndarray]:
        return {"w": np.zeros(2, np.float32)}

    def fit(self, weights: dict[str, np.ndarray], server_round: int, config: dict) -> FitResult:
        time.sleep(self.seconds)
        return FitResult({"w": weights["w"] + 1}, 7, {"loss": 0.5})

    def evaluate(self, weights: dict[str, np.ndarray], server_round: int) -> EvaluateResult:
        self.evaluated += 1
        return EvaluateResult(3, {"accuracy": 1.0})


def test_a_slow_trainer_sleeps_factor_minus_one_times_each_measured_fit() -> None:
    ticks = iter([10.0, 10.25, 20.0, 20.5])  # two fits: 0.25 s, then 0.5 s
    slept: list[float] = []
    trainer = SlowTrainer(Sleepy(0), 5, sleep=slept.append, clock=lambda: next(ticks))
    result = trainer.fit({"w": np.zeros(2, np.float32)}, 1, {})
    assert result.num_examples == 7 and result.weights["w"].tolist() == [1.0, 1.0]
    trainer.fit({"w": np.zeros(2, np.float32)}, 2, {})
    assert slept == [1.0, 2.0]
    assert trainer.evaluate({"w": np.zeros(2, np.float32)}, 1).metrics == {"accuracy": 1.0}
    assert slept == [1.0, 2.0]  # evaluation is not slowed
    assert trainer.initial_weights()["w"].shape == (2,)


def test_a_slow_trainer_really_takes_factor_times_as_long() -> None:
    trainer = SlowTrainer(Sleepy(0.05), 3)
    started = time.monotonic()
    trainer.fit({"w": np.zeros(2, np.float32)}, 1, {})
    assert time.monotonic() - started >= 0.15


def test_slow_down_wraps_only_a_real_slowdown() -> None:
    inner = Sleepy(0)
    assert slow_down(inner, 1.0) is inner
    assert isinstance(slow_down(inner, 2.0), SlowTrainer)
    with pytest.raises(ValueError, match="slowdown must be >= 1"):
        SlowTrainer(inner, 0.5)
