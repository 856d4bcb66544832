"""The HTML report: embedded PNG curves, per-round table, failed and partial histories."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from fl_kubeflow.report import learning_curves_png, main, render_report, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def evaluate(accuracy: float, loss: float, clients: int = 3) -> dict[str, Any]:
    return {
        "num_clients": clients,
        "num_examples": 360,
        "metrics": {"loss": loss, "accuracy": accuracy},
    }


FINISHED: dict[str, Any] = {
    "status": "finished",
    "error": None,
    "num_rounds": 3,
    "num_clients": 3,
    "strategy": "fedavg",
    "started_at": "2025-01-01T00:00:00Z",
    "finished_at": "2025-01-01T00:01:00Z",
    "rounds": [
        {"round": 0, "evaluate": evaluate(0.1, 2.3)},
        {
            "round": 1,
            "started_at": "2025-01-01T00:00:01Z",
            "duration_s": 1.25,
            "contributors": ["0", "1", "2"],
            "timed_out": [],
            "refused": [],
            "num_examples": 1437,
            "train": {"loss": 1.1, "accuracy": 0.64},
            "evaluate": evaluate(0.86, 0.44),
            "bytes_in": 663000,
            "bytes_out": 663000,
        },
        {
            "round": 2,
            "duration_s": 1.5,
            "contributors": ["0", "1"],
            "timed_out": ["2"],
            "refused": [{"client": "3", "reason": "shape <mismatch>"}],
            "num_examples": 958,
            "train": {"loss": 0.3, "accuracy": 0.91},
            "evaluate": None,  # evaluation skipped this round
        },
        {
            "round": 3,
            "duration_s": 1.1,
            "contributors": ["0", "1", "2"],
            "num_examples": 1437,
            "train": {"loss": 0.2, "accuracy": 0.95},
            "evaluate": evaluate(0.94, 0.21),
        },
    ],
}


def embedded_png(page: str) -> bytes:
    match = re.search(r'<img[^>]* src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match, "the report must embed its curves as a base64 PNG"
    return base64.b64decode(match.group(1), validate=True)


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height, decoded by a real PNG reader."""
    import matplotlib.image

    image = matplotlib.image.imread(io.BytesIO(data), format="png")
    return image.shape[1], image.shape[0]


def test_curves_png_is_a_real_image() -> None:
    data = learning_curves_png(FINISHED)
    assert data.startswith(PNG_SIGNATURE)
    assert png_size(data) == (1000, 400)


def test_curves_depend_on_the_history() -> None:
    assert learning_curves_png(FINISHED) != learning_curves_png({"rounds": []})


def test_report_embeds_png_and_tabulates_rounds(tmp_path: Path) -> None:
    path = tmp_path / "out" / "report.html"
    write_report(FINISHED, {"learning_rate": 0.05, "model": "mlp", "dataset": "digits"}, path)
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert embedded_png(page).startswith(PNG_SIGNATURE)
    assert "Status: <b>finished</b>" in page
    rows = re.findall(r"<tr><td>(\d+)</td>", page)
    assert rows == ["0", "1", "2", "3"]
    assert "<td>0</td><td>3 (eval)</td><td>360</td>" in page  # round 0: evaluation only
    assert "<td>1</td><td>3</td><td>1,437</td><td>1.1000</td><td>0.6400</td>" in page
    assert "<td>0.4400</td><td>0.8600</td><td>1.25</td><td>663,000 / 663,000</td>" in page
    # round 2: no evaluation, a timeout, and a refusal whose reason is escaped
    assert "<td>2</td><td>2</td><td>958</td><td>0.3000</td><td>0.9100</td><td>\u2013</td>" in page
    assert "timed out: 2; refused 3: shape &lt;mismatch&gt;" in page
    assert "final eval accuracy</th><td>0.9400 (round 3)" in page
    assert "rounds completed</th><td>3 of 3" in page
    for key, value in (("dataset", "digits"), ("learning_rate", "0.05"), ("model", "mlp")):
        assert f"<th>{key}</th><td>{value}</td>" in page


def test_failed_partial_history(tmp_path: Path) -> None:
    history = {
        "status": "failed",
        "error": "client 2 <refused> & quit",
        "num_rounds": 10,
        "num_clients": 3,
        "rounds": [{"round": 0, "evaluate": evaluate(0.1, 2.3)}],
    }
    path = tmp_path / "report.html"
    write_report(history, {}, path)
    page = path.read_text(encoding="utf-8")
    assert 'class="status failed"' in page and "Status: <b>failed</b>" in page
    assert "client 2 &lt;refused&gt; &amp; quit" in page
    assert "<refused>" not in page
    assert "rounds completed</th><td>0 of 10" in page
    assert embedded_png(page).startswith(PNG_SIGNATURE)


@pytest.mark.parametrize(
    "history",
    [
        {},
        {"status": "failed", "error": "server crashed before round 0"},
        {"rounds": "garbage"},
        {"rounds": [{"round": 1, "train": {"loss": float("nan"), "accuracy": None}}]},
        {"rounds": [{"round": 1, "evaluate": {"metrics": {"accuracy": "high"}}}, {"no": "round"}]},
    ],
)
def test_odd_histories_still_render(history: dict[str, Any]) -> None:
    page = render_report(history, {"nested": {"a": [1, 2]}})
    assert embedded_png(page).startswith(PNG_SIGNATURE)
    assert "<th>nested</th><td>{&quot;a&quot;: [1, 2]}</td>" in page


def test_cli_writes_report(tmp_path: Path) -> None:
    history_file = tmp_path / "history.json"
    history_file.write_text(json.dumps(FINISHED))
    params_file = tmp_path / "params.json"
    params_file.write_text(json.dumps({"rounds": 3}))
    output = tmp_path / "report.html"
    assert main([str(history_file), "--params", str(params_file), "--output", str(output)]) == 0
    assert "<th>rounds</th><td>3</td>" in output.read_text(encoding="utf-8")
    assert main([str(tmp_path / "missing.json"), "--output", str(output)]) == 1


SECURE_FACTS: dict[str, Any] = {
    "neighbours": 4,
    "threshold": 3,
    "roster": 5,
    "survivors": 3,
    "revealed": 3,
    "dropped_at_shares": [],
    "dropped_at_masked": ["3", "4"],
    "dropped_at_reveal": [],
    "bits": 32,
    "range": 1.0,
    "max_weight": 100000,
    "step": 4.6566e-05,
    "error_bound": 2.3283e-05,
    "weighting": "examples",
    "total_weight": 1078,
    "unmask_s": 0.0421,
}
SECURE: dict[str, Any] = {
    **FINISHED,
    "num_rounds": 2,
    "num_clients": 5,
    "rounds": [
        {"round": 0, "evaluate": evaluate(0.1, 2.3)},
        {
            "round": 1,
            "duration_s": 2.0,
            "contributors": ["0", "1", "2"],
            "num_examples": 1078,
            "train": {"loss": 1.1, "accuracy": 0.64},
            "evaluate": evaluate(0.8, 0.6),
            "secure_aggregation": SECURE_FACTS,
        },
        {  # central DP: uniform weights, no example count
            "round": 2,
            "contributors": ["0", "1", "2", "3", "4"],
            "num_examples": None,
            "train": {"loss": 0.5},
            "evaluate": evaluate(0.9, 0.4),
            "secure_aggregation": {
                **SECURE_FACTS,
                "survivors": 5,
                "dropped_at_masked": [],
                "dropped_at_shares": ["5"],
                "weighting": "uniform",
                "total_weight": 5,
            },
        },
    ],
}


def test_secure_rounds_get_their_own_table(tmp_path: Path) -> None:
    page = render_report(SECURE, {})
    assert "secure aggregation</th><td>SecAgg+ in 2 of 2 rounds" in page
    assert "<h2>Secure aggregation</h2>" in page
    assert "<th>dropped before masked input (recovered)</th>" in page
    # round, roster, survivors, the three drop-out lists, k, t, bits, range, step, bound...
    assert (
        "<tr><td>1</td><td>5</td><td>3</td><td>0</td><td>2: 3, 4</td><td>0</td><td>4</td>"
        "<td>3</td><td>32</td><td>1</td><td>4.66e-05</td><td>2.33e-05</td><td>examples</td>"
        "<td>1,078</td><td>0.042</td></tr>"
    ) in page
    assert "<tr><td>2</td><td>5</td><td>5</td><td>1: 5</td><td>0</td>" in page
    assert "<td>uniform</td><td>5</td>" in page
    # A plain history has no such table.
    assert "Secure aggregation" not in render_report(FINISHED, {})


def test_the_kfp_summary_says_how_many_rounds_were_secure() -> None:
    from fl_kubeflow.tasks.server_task import markdown_summary

    assert "| secure aggregation | SecAgg+ in 2 of 2 rounds |" in markdown_summary(SECURE, {})
    assert "secure aggregation" not in markdown_summary(FINISHED, {})


def test_the_local_runs_table_shows_the_secure_facts() -> None:
    from fl_kubeflow.local.runner import summary_lines

    lines = summary_lines(SECURE)
    assert lines[2].split()[:3] == ["1", "3", "1078"]
    assert lines[3].strip() == (
        "secure: 3/5 survived, 2 recovered, k=4 t=3, step 4.66e-05 (error <= 2.33e-05)"
    )
    assert lines[4].split()[:3] == ["2", "5", "-"]
    assert "secure: 5/5 survived, 0 recovered" in lines[5]
    assert len(summary_lines(FINISHED)) == 1 + len(FINISHED["rounds"])
