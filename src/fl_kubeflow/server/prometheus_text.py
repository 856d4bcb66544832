"""/metrics: the run's gauges and counters in Prometheus' text exposition format."""

from __future__ import annotations

from fl_kubeflow.protocol import Phase
from fl_kubeflow.server.federation import RunMetrics

CONTENT_TYPE = "text/plain; version=0.0.4"


def exposition(metrics: RunMetrics) -> str:
    """``metrics`` as Prometheus text (the names are listed in docs/protocol.md)."""
    counters = metrics.counters
    lines = [
        "# HELP fl_round Current round (0 before the first).",
        "# TYPE fl_round gauge",
        f"fl_round {metrics.round}",
        "# HELP fl_rounds_completed Rounds aggregated so far.",
        "# TYPE fl_rounds_completed gauge",
        f"fl_rounds_completed {metrics.completed_rounds}",
        "# HELP fl_clients_joined Clients that joined.",
        "# TYPE fl_clients_joined gauge",
        f"fl_clients_joined {metrics.clients_joined}",
        "# HELP fl_clients_active Clients taking part in the current round.",
        "# TYPE fl_clients_active gauge",
        f"fl_clients_active {metrics.clients_active}",
        "# HELP fl_phase The run's phase (1 for the current one).",
        "# TYPE fl_phase gauge",
    ]
    lines += [f'fl_phase{{phase="{p.value}"}} {int(p is metrics.phase)}' for p in Phase]
    lines += [
        "# HELP fl_updates_accepted_total Client updates folded into an aggregate.",
        "# TYPE fl_updates_accepted_total counter",
        f"fl_updates_accepted_total {counters.updates_accepted}",
        "# HELP fl_updates_duplicate_total Resent updates answered without counting.",
        "# TYPE fl_updates_duplicate_total counter",
        f"fl_updates_duplicate_total {counters.updates_duplicate}",
        "# HELP fl_requests_rejected_total Requests refused, by reason.",
        "# TYPE fl_requests_rejected_total counter",
    ]
    lines += [
        f'fl_requests_rejected_total{{reason="{k}"}} {v}'
        for k, v in sorted(counters.rejections.items())
    ]
    lines += [
        "# HELP fl_bytes_received_total Update bytes received.",
        "# TYPE fl_bytes_received_total counter",
        f"fl_bytes_received_total {counters.bytes_in}",
        "# HELP fl_bytes_sent_total Model bytes sent.",
        "# TYPE fl_bytes_sent_total counter",
        f"fl_bytes_sent_total {counters.bytes_out}",
    ]
    return "\n".join(lines) + "\n"
