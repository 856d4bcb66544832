"""``fl-kubeflow local --mode async`` end to end: a real server and numpy client processes
on loopback, FedBuff versions with their staleness in history.json, the terminal table,
the progress lines and report.html (docs/asynchronous.md)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fl_processes import run_cli

VERSIONS = 4
BUFFER = 2


def test_an_async_local_run_makes_versions_of_k_updates_and_reports_their_staleness(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    done = run_cli(
        "local",
        "--output",
        str(out),
        "--trainer",
        "numpy-linear",
        "--clients",
        "3",
        "--rounds",
        str(VERSIONS),
        "--mode",
        "async",
        "--async-buffer-size",
        str(BUFFER),
        "--async-max-staleness",
        "3",
        "--slow-clients",
        "0=2",
        "--join-timeout",
        "120",
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    history = json.loads((out / "history.json").read_text())
    assert history["status"] == "finished"
    assert history["mode"] == "async"
    assert history["async"]["buffer_size"] == BUFFER
    assert history["async"]["max_staleness"] == 3
    versions = [r for r in history["rounds"] if r["round"] > 0]
    assert [v["round"] for v in versions] == list(range(1, VERSIONS + 1))
    for v in versions:
        # K updates, each from a client with its staleness against the version before.
        assert len(v["contributors"]) == BUFFER, v
        assert sorted(v["staleness"]) == v["contributors"] == sorted(v["base_versions"])
        for client, tau in v["staleness"].items():
            assert tau == v["round"] - 1 - v["base_versions"][client] >= 0, v
    first = history["rounds"][0]["evaluate"]["metrics"]["loss"]
    last = next(r for r in reversed(history["rounds"]) if r.get("evaluate"))["evaluate"]
    assert last["metrics"]["loss"] < first  # the linear model learns
    # The terminal table says "version" and shows each contributor's staleness (the
    # progress lines, timing-dependent here, are tests/test_async_report.py's).
    assert "version  clients  examples" in done.stdout
    assert done.stdout.count("staleness ") >= VERSIONS
    page = (out / "report.html").read_text()
    assert "<h2>Staleness</h2>" in page and "FedBuff (buffer_size=2" in page
    # The straggler option reached the run (the client got --slowdown 2.0).
    assert json.loads((out / "params.json").read_text())["slow_clients"] == {"0": 2.0}
