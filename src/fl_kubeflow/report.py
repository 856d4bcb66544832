"""A self-contained HTML report of a federated run, from the server's ``history.json``.

Learning curves (matplotlib, Agg, imported lazily; no TensorFlow) are embedded as
a base64 PNG so the single file renders anywhere: a KFP ``Output[HTML]`` artifact,
a browser, a mail attachment. Failed and partial histories, rounds without
evaluation and round 0 (evaluation of the initial model only) are all expected
input: every field is optional and missing values show as a dash.

History schema (written by the server)::

    {"status": "finished"|"failed", "error": null|str, "num_rounds": R, "num_clients": N,
     "strategy": "fedavg", "started_at": ISO, "finished_at": ISO,
     "rounds": [{"round": 0, "evaluate": {"num_clients", "num_examples", "metrics"}},
                {"round": 1, "started_at", "duration_s", "contributors", "timed_out",
                 "refused": [{"client", "reason"}], "num_examples",
                 "train": {"loss", "accuracy"}, "evaluate": {...} | null,
                 "bytes_in", "bytes_out",
                 "secure_aggregation": {...} (secure rounds only: SECURE_COLUMNS),
                 "staleness": {client: tau}, "base_versions": {client: b} (async only)}],
     "mode": "sync"|"async", "async": {option: value} (async only)}

A secure round (docs/secure_aggregation.md) gets a row in a "Secure aggregation"
table: who survived, the drop-outs whose masks were removed, the graph and the
quantisation. An asynchronous run (docs/asynchronous.md: a "round" is a model
version) gets a "Staleness" table: per version, each contributor with its
staleness and the version it started from.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DASH = "\u2013"


def _number(value: Any) -> float | None:
    """A finite float, or None for anything missing or unplottable."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _rounds(history: Mapping[str, Any]) -> list[dict[str, Any]]:
    rounds = history.get("rounds")
    if not isinstance(rounds, list):
        return []
    good = [r for r in rounds if isinstance(r, dict) and isinstance(r.get("round"), int)]
    return sorted(good, key=lambda r: r["round"])


def _metric(section: Any, key: str) -> float | None:
    """``section["metrics"][key]`` for evaluate entries, ``section[key]`` for train entries."""
    if not isinstance(section, dict):
        return None
    metrics = section.get("metrics", section)
    return _number(metrics.get(key)) if isinstance(metrics, dict) else None


def _series(
    rounds: Sequence[Mapping[str, Any]], section: str, key: str
) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for entry in rounds:
        value = _metric(entry.get(section), key)
        if value is not None:
            xs.append(entry["round"])
            ys.append(value)
    return xs, ys


def learning_curves_figure(history: Mapping[str, Any]) -> Figure:
    """Accuracy and loss per round (evaluation and training) as a matplotlib Figure.

    Evaluation includes round 0 (the initial model); training starts at round 1.
    A history without any metrics still gives a figure, saying so.

    Args:
        history: the server's history (see the module docstring); partial is fine.
    """
    # Figure + Agg canvas directly: no pyplot global state, safe in a server thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rounds = _rounds(history)
    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    plotted = False
    for ax, key, title in ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", "Loss")):
        for section, label, style in (
            ("evaluate", "evaluation (global model)", "o-"),
            ("train", "training (clients, last local epoch)", "s--"),
        ):
            xs, ys = _series(rounds, section, key)
            if xs:
                ax.plot(xs, ys, style, label=label, markersize=4)
                plotted = True
        ax.set_title(title)
        ax.set_xlabel(round_word(history))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if not plotted:
        for ax in axes:
            ax.text(
                0.5, 0.5, "no metrics recorded", ha="center", va="center", transform=ax.transAxes
            )
    status = history.get("status")
    if status and status != "finished":
        figure.suptitle(f"run {status}", color="firebrick")
    figure.tight_layout()
    return figure


def figure_png(figure: Figure) -> bytes:
    """A matplotlib Figure rendered as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def learning_curves_png(history: Mapping[str, Any]) -> bytes:
    """The learning curves of ``learning_curves_figure`` as PNG bytes."""
    return figure_png(learning_curves_figure(history))


def _fmt(value: Any, spec: str = ".4f") -> str:
    number = _number(value)
    if number is None:
        return DASH
    return format(number, spec)


def _text(value: Any) -> str:
    if value is None or value == "":
        return DASH
    return html.escape(value if isinstance(value, str) else json.dumps(value, default=str))


def _round_row(entry: Mapping[str, Any]) -> str:
    evaluate = entry.get("evaluate") if isinstance(entry.get("evaluate"), dict) else {}
    train = entry.get("train") if isinstance(entry.get("train"), dict) else {}
    contributors = entry.get("contributors")
    if isinstance(contributors, list):
        clients = str(len(contributors))
    elif evaluate.get("num_clients") is not None:  # round 0: only evaluation happened
        clients = f"{_fmt(evaluate.get('num_clients'), '.0f')} (eval)"
    else:
        clients = DASH
    examples = entry.get("num_examples")
    if examples is None and evaluate:
        examples = evaluate.get("num_examples")
    problems = []
    timed_out = entry.get("timed_out")
    if isinstance(timed_out, list) and timed_out:
        problems.append("timed out: " + ", ".join(str(c) for c in timed_out))
    refused = entry.get("refused")
    if isinstance(refused, list):
        for item in refused:
            if isinstance(item, dict):
                problems.append(f"refused {item.get('client')}: {item.get('reason')}")
            else:
                problems.append(f"refused {item}")
    traffic = DASH
    if entry.get("bytes_in") is not None or entry.get("bytes_out") is not None:
        traffic = f"{_fmt(entry.get('bytes_in'), ',.0f')} / {_fmt(entry.get('bytes_out'), ',.0f')}"
    cells = [
        str(entry["round"]),
        clients,
        _fmt(examples, ",.0f"),
        _fmt(train.get("loss")),
        _fmt(train.get("accuracy")),
        _fmt(_metric(evaluate, "loss")),
        _fmt(_metric(evaluate, "accuracy")),
        _fmt(entry.get("duration_s"), ".2f"),
        traffic,
        html.escape("; ".join(problems)) if problems else "",
    ]
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right;font-size:.9em}
th{background:#f2f2f2}td:last-child,.params td{text-align:left}
.status{padding:.5em 1em;border-radius:4px;display:inline-block}
.finished{background:#e6f4ea}.failed{background:#fde8e8}.other{background:#fff4e0}
pre{white-space:pre-wrap;background:#f8f8f8;padding:.5em}
img{max-width:100%}
"""


# A secure round's facts (history key "secure_aggregation"), in table order: (key, header,
# format); lists of client ids show as their count and ids.
SECURE_COLUMNS = (
    ("roster", "roster", ".0f"),
    ("survivors", "survivors", ".0f"),
    ("dropped_at_shares", "dropped before shares", ""),
    ("dropped_at_masked", "dropped before masked input (recovered)", ""),
    ("dropped_at_reveal", "dropped before reveal", ""),
    ("neighbours", "k", ".0f"),
    ("threshold", "t", ".0f"),
    ("bits", "bits", ".0f"),
    ("range", "range", ".4g"),
    ("step", "step", ".3g"),
    ("error_bound", "error bound", ".3g"),
    ("weighting", "weighting", ""),
    ("total_weight", "total weight", ",.0f"),
    ("unmask_s", "unmask (s)", ".3f"),
)


def secure_facts(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """The round's ``secure_aggregation`` record, or None for a plain round."""
    facts = entry.get("secure_aggregation")
    return facts if isinstance(facts, dict) else None


def _ids(value: Any) -> str:
    if not isinstance(value, list):
        return DASH
    return f"{len(value)}: {', '.join(str(c) for c in value)}" if value else "0"


def _secure_cell(facts: Mapping[str, Any], key: str, spec: str) -> str:
    value = facts.get(key)
    if key.startswith("dropped_at_"):
        return html.escape(_ids(value))
    return _fmt(value, spec) if spec else _text(value)


def _secure_row(entry: Mapping[str, Any], facts: Mapping[str, Any]) -> str:
    cells = [str(entry["round"])] + [_secure_cell(facts, k, f) for k, _, f in SECURE_COLUMNS]
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def is_async(history: Mapping[str, Any]) -> bool:
    """Whether the history is an asynchronous (FedBuff) run's: its rounds are versions."""
    return history.get("mode") == "async"


def round_word(history: Mapping[str, Any]) -> str:
    """What one entry of ``rounds`` is called: "version" in async mode, else "round"."""
    return "version" if is_async(history) else "round"


def async_text(history: Mapping[str, Any]) -> str | None:
    """ "FedBuff (buffer_size=3, max_staleness=10, ...)" for an async history, else None."""
    if not is_async(history):
        return None
    options = history.get("async")
    shown = ", ".join(f"{k}={v}" for k, v in options.items()) if isinstance(options, dict) else ""
    return f"FedBuff ({shown})" if shown else "FedBuff"


def staleness_of(entry: Mapping[str, Any]) -> dict[str, int] | None:
    """The version's ``staleness`` (client -> tau), or None (a synchronous round)."""
    found = entry.get("staleness")
    if not isinstance(found, dict):
        return None
    return {str(c): int(t) for c, t in found.items() if _number(t) is not None}


def staleness_cells(entry: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(contributors "client tau (from b)", mean tau, max tau) of an async version."""
    staleness = staleness_of(entry)
    if staleness is None:
        return None
    bases = entry.get("base_versions") if isinstance(entry.get("base_versions"), dict) else {}
    named = []
    for client in sorted(staleness, key=_client_order):
        base = bases.get(client)
        named.append(f"{client}: {staleness[client]}" + (f" (v{base})" if base is not None else ""))
    taus = list(staleness.values())
    if not taus:
        return "", DASH, DASH
    return ", ".join(named), _fmt(sum(taus) / len(taus), ".2f"), str(max(taus))


def staleness_line(entry: Mapping[str, Any]) -> str | None:
    """One terminal line: "staleness 0: 0 (v2), 1: 1 (v1); mean 0.50, max 1"; None if sync."""
    cells = staleness_cells(entry)
    if cells is None:
        return None
    return f"staleness {cells[0]}; mean {cells[1]}, max {cells[2]}"


def _client_order(client: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order, then the rest by name."""
    return (0, int(client)) if client.isdigit() else (1, client)


def _staleness_row(entry: Mapping[str, Any], cells: tuple[str, str, str]) -> str:
    contributors, mean, most = cells
    row = [str(entry["round"]), str(len(staleness_of(entry) or {})), mean, most, contributors]
    return "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"


def secure_rounds_text(history: Mapping[str, Any]) -> str | None:
    """The text "SecAgg+ in S of R rounds" for a history with secure rounds, else None."""
    trained = [r for r in _rounds(history) if r["round"] > 0]
    secure = sum(1 for r in trained if secure_facts(r) is not None)
    return f"SecAgg+ in {secure} of {len(trained)} rounds" if secure else None


def secure_summary(facts: Mapping[str, Any]) -> str:
    """One line for a terminal: survivors of the roster, drop-outs recovered, k, t, step."""
    recovered = facts.get("dropped_at_masked")
    return (
        f"secure: {_fmt(facts.get('survivors'), '.0f')}/{_fmt(facts.get('roster'), '.0f')} "
        f"survived, {len(recovered) if isinstance(recovered, list) else DASH} recovered, "
        f"k={_fmt(facts.get('neighbours'), '.0f')} t={_fmt(facts.get('threshold'), '.0f')}, "
        f"step {_fmt(facts.get('step'), '.3g')} (error <= {_fmt(facts.get('error_bound'), '.3g')})"
    )


def render_report(history: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """The report as an HTML string (see ``write_report``)."""
    rounds = _rounds(history)
    status = str(history.get("status") or "unknown")
    css = status if status in ("finished", "failed") else "other"
    trained = [r for r in rounds if r["round"] > 0]
    evaluated = [r for r in rounds if _metric(r.get("evaluate"), "accuracy") is not None]
    word = round_word(history)
    summary = {
        "strategy": history.get("strategy"),
        "clients": history.get("num_clients"),
        f"{word}s completed": f"{len(trained)} of {history.get('num_rounds', DASH)}",
        "started": history.get("started_at"),
        "finished": history.get("finished_at"),
    }
    if evaluated:
        last = evaluated[-1]
        best = max(evaluated, key=lambda r: _metric(r["evaluate"], "accuracy") or 0.0)
        summary["final eval accuracy"] = (
            f"{_fmt(_metric(last['evaluate'], 'accuracy'))} ({word} {last['round']})"
        )
        summary["final eval loss"] = _fmt(_metric(last["evaluate"], "loss"))
        summary["best eval accuracy"] = (
            f"{_fmt(_metric(best['evaluate'], 'accuracy'))} ({word} {best['round']})"
        )
    secure = [(r, f) for r in trained if (f := secure_facts(r)) is not None]
    if secure:
        summary["secure aggregation"] = secure_rounds_text(history)
    if is_async(history):
        summary["mode"] = async_text(history)
    stale = [(r, c) for r in trained if (c := staleness_cells(r)) is not None]
    png = base64.b64encode(learning_curves_png(history)).decode("ascii")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>Federated learning report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Federated learning report</h1>",
        f'<p class="status {css}">Status: <b>{html.escape(status)}</b></p>',
    ]
    if history.get("error"):
        parts.append(f"<h2>Error</h2><pre>{_text(history.get('error'))}</pre>")
    parts.append('<table class="params">')
    parts += [f"<tr><th>{html.escape(k)}</th><td>{_text(v)}</td></tr>" for k, v in summary.items()]
    parts.append("</table>")
    parts.append(f'<img alt="learning curves" src="data:image/png;base64,{png}">')
    parts.append(f"<h2>{word.capitalize()}s</h2>")
    if rounds:
        headers = (
            word,
            "clients",
            "examples",
            "train loss",
            "train acc",
            "eval loss",
            "eval acc",
            "duration (s)",
            "bytes in / out",
            "problems",
        )
        parts.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in headers) + "</tr>")
        parts += [_round_row(entry) for entry in rounds]
        parts.append("</table>")
    else:
        parts.append(f"<p>No {word}s were recorded.</p>")
    if stale:
        parts.append("<h2>Staleness</h2>")
        parts.append(
            "<p>Each update's staleness: how many versions were made between the one its "
            "client started from (vB) and the one it went into.</p>"
        )
        headers = ("version", "updates", "mean staleness", "max staleness", "client: staleness")
        parts.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in headers) + "</tr>")
        parts += [_staleness_row(entry, cells) for entry, cells in stale]
        parts.append("</table>")
    if secure:
        parts.append("<h2>Secure aggregation</h2>")
        headers = ("round", *(header for _, header, _ in SECURE_COLUMNS))
        parts.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in headers) + "</tr>")
        parts += [_secure_row(entry, facts) for entry, facts in secure]
        parts.append("</table>")
    parts.append("<h2>Parameters</h2>")
    if params:
        parts.append('<table class="params">')
        parts += [
            f"<tr><th>{html.escape(str(k))}</th><td>{_text(v)}</td></tr>"
            for k, v in sorted(params.items(), key=lambda item: str(item[0]))
        ]
        parts.append("</table>")
    else:
        parts.append("<p>None recorded.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(history: Mapping[str, Any], params: Mapping[str, Any], path: str | Path) -> None:
    """Write a self-contained HTML report: status, curves, per-round table, parameters.

    Args:
        history: the server's history (see the module docstring); partial is fine.
        params: the run's parameters, shown as a table.
        path: destination file (parent directories are created).
    """
    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(render_report(history, params), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fl_kubeflow.report history.json [--params p.json] --output report.html``."""
    parser = argparse.ArgumentParser(prog="python -m fl_kubeflow.report")
    parser.add_argument("history", help="history.json written by the server")
    parser.add_argument("--params", help="JSON object of run parameters")
    parser.add_argument("--output", required=True, help="HTML file to write")
    args = parser.parse_args(argv)
    try:
        history = json.loads(Path(args.history).read_text(encoding="utf-8"))
        params = json.loads(Path(args.params).read_text(encoding="utf-8")) if args.params else {}
        if not isinstance(history, dict) or not isinstance(params, dict):
            raise ValueError("history and params must be JSON objects")
        write_report(history, params, args.output)
    except (OSError, ValueError) as exc:
        print(f"report failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
