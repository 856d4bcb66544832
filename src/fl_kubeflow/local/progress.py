"""Progress lines of a local run, read from the server's /v1/status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import requests

from fl_kubeflow import protocol
from fl_kubeflow.auth import auth_headers


def fmt_metrics(metrics: dict[str, float] | None) -> str:
    if not metrics:
        return "-"
    names = {"loss": "loss", "accuracy": "acc"}
    parts = [f"{names[k]} {metrics[k]:.4f}" for k in names if k in metrics]
    parts += [f"{k} {v:.4g}" for k, v in metrics.items() if k not in names]
    return " ".join(parts)


class ProgressReporter:
    """Prints a line when clients join, for every completed round, and for every evaluation.

    A round's evaluation arrives while the next round trains, so it is printed once
    the next round has closed (or the run has ended), when every client has sent it.
    In async mode a round is a model version, and its line is followed by each
    contributor's staleness.
    """

    def __init__(
        self,
        url: str,
        num_clients: int,
        num_rounds: int,
        emit: Callable[[str], None],
        token: str | None = None,
    ) -> None:
        self.url = url
        self.num_clients = num_clients
        self.num_rounds = num_rounds
        self.emit = emit
        self.session = requests.Session()
        self.session.headers.update(auth_headers(token))
        self._joined = 0
        self._trained = 0
        self._evaluated = -1

    def poll(self, final: bool = False) -> dict[str, Any] | None:
        """Read the status once (short timeout: a busy server must not stall the runner)."""
        try:
            response = self.session.get(
                self.url + protocol.STATUS_PATH,
                params={protocol.SINCE_PARAM: self._evaluated + 1},
                timeout=2,
            )
            status = response.json()
        except (requests.RequestException, ValueError):
            return None
        self._show(status, final)
        return status

    def finish(self, history: dict[str, Any]) -> None:
        """Print what the status reads missed, from the run's ``history.json``: a server
        that ends right after its last round is gone before the next read."""
        self._show({"phase": history["status"], "rounds": history["rounds"]}, final=True)

    def _show(self, status: dict[str, Any], final: bool) -> None:
        from fl_kubeflow.report import round_word, staleness_line

        word = round_word(status)
        joined = len(status.get("joined", []))
        if joined != self._joined and status.get("phase") == "waiting":
            self.emit(f"waiting for clients: {joined}/{self.num_clients} joined")
        self._joined = joined
        ended = final or status.get("phase") in ("finished", "failed")
        for record in status.get("rounds", []):
            number = record["round"]
            if number > self._trained:
                self._trained = number
                line = (
                    f"{word} {number:>3}/{self.num_rounds}: {len(record['contributors'])} clients,"
                    f" {record['num_examples']} examples, train {fmt_metrics(record['train'])}"
                    f" ({record['duration_s']:.1f}s)"
                )
                if record.get("timed_out"):
                    line += f"; timed out: {', '.join(record['timed_out'])}"
                self.emit(line)
                stale = staleness_line(record)
                if stale is not None:
                    self.emit(f"          {stale}")
            evaluation = record.get("evaluate")
            if evaluation and number > self._evaluated and (number < self._trained or ended):
                self._evaluated = number
                self.emit(
                    f"          evaluation of the {word}-{number} model on "
                    f"{evaluation['num_clients']} clients: {fmt_metrics(evaluation['metrics'])}"
                )
