"""Secure aggregation's cost: round time and server memory with and without SecAgg+.

For each P (float32 parameters) and N (clients), one plain FedAvg run and one secure
run (``--secure-aggregation``, default options) back to back, same machine, same
client processes (round_overhead.py's: FederatedClient + DeltaTrainer, global plus
0.001, no training), 5 rounds each. Round time is the server's median history.json
``duration_s``; server memory its peak RSS. Then where a secure round's time goes
(the unmask the server times, and the secagg primitives timed alone at that P), the
quantisation error measured against the exact FedAvg model, the goals of issue 16
and Flower 1.42's SecAgg+ on this machine as the anchor. ``--digits`` adds 10 rounds
of Keras digits with and without secure aggregation (accuracy within 1 point).

    .venv/bin/python benchmarks/secure_aggregation.py                # ~10 minutes
    .venv/bin/python benchmarks/secure_aggregation.py --digits       # + ~5 minutes
    .venv/bin/python benchmarks/secure_aggregation.py --params 1000000 --clients 8 --no-write

The table is printed and written as its own section of benchmarks/results.md (the
other sections are kept).
"""

from __future__ import annotations

import argparse
import itertools
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import requests
import round_overhead
from perf_common import (
    HERE,
    PYTHON,
    SECURE_SECTION,
    load_average,
    machine_lines,
    model_shapes,
    replace_section,
    timed,
)

from fl_kubeflow import wire
from fl_kubeflow.cli.secagg_options import SWITCH
from fl_kubeflow.client.numpy_trainers import random_weights
from fl_kubeflow.secagg import masks, shamir
from fl_kubeflow.secagg.params import SecAggParams, choose_graph
from fl_kubeflow.secagg.quantise import Quantiser

PARAMS = (100_000, 1_000_000, 10_000_000)
CLIENTS = (8, 32)
ROUNDS = round_overhead.ROUNDS
SECURE = [SWITCH]
MB = 1e6
# Flower 1.42's SecAgg+ workflow measured on this machine with N = 8 (issue 16): round
# seconds and its ratio to Flower's own plain round, per P; its quantisation error at
# its default max_weight.
FLOWER = {100_000: (0.565, 5.5), 1_000_000: (0.922, 3.0)}
FLOWER_ERROR = 2e-3
# Issue 16's goals at N = 8: the secure round at most this many times the plain one.
GOAL_RATIO = {100_000: 3.0, 1_000_000: 2.0}
GOAL_CELLS = {(p, 8) for p in GOAL_RATIO}
# Back-to-back plain/secure pairs of a goal's cell: their ratio varies from pair to
# pair on this shared machine more than the goals' margins.
REPEAT = 5
# Server memory is flat in N if secure's extra RSS over plain grows by less than this
# from the smallest N to the largest.
FLAT_MB = 10.0
DIGITS_ROUNDS = 10
# Seconds between the stage watch's status requests.
WATCH_INTERVAL = 0.002
STAGES = ("keys", "shares", "masked", "reveal")
# Cells whose stages are watched (an extra run each): the goals' N.
WATCH_CLIENTS = (8,)


def cell(
    num_params: int, num_clients: int, base: Path, rounds: int, tag: str = ""
) -> dict[str, Any]:
    """One plain and one secure run of the same federation, and what they show."""
    folders = {
        mode: base / f"p{num_params}-n{num_clients}-{mode}{tag}" for mode in ("plain", "secure")
    }
    runs = {
        mode: round_overhead.run_one(
            num_params,
            num_clients,
            folder,
            rounds,
            server_options=SECURE if mode == "secure" else (),
        )
        for mode, folder in folders.items()
    }
    history = json.loads((folders["secure"] / "out" / "history.json").read_text())
    facts = [r["secure_aggregation"] for r in history["rounds"] if r["round"] >= 1]
    # Every "..._s" the secure round records: the server's own split of its time.
    stage_s = {
        key: statistics.median(f[key] for f in facts)
        for key in facts[0]
        if key.endswith("_s") and isinstance(facts[0][key], int | float)
    }
    plain, secure = runs["plain"], runs["secure"]
    return {
        "params": num_params,
        "clients": num_clients,
        "rounds": rounds,
        "plain_round_s": plain["median_round_s"],
        "secure_round_s": secure["median_round_s"],
        "secure_rounds_s": secure["round_s"],
        "ratio": secure["median_round_s"] / plain["median_round_s"],
        "plain_rss": plain["server_peak_rss"],
        "secure_rss": secure["server_peak_rss"],
        "secure_client_rss": secure["client_peak_rss_max"],
        "plain_client_rss": plain["client_peak_rss_max"],
        "bytes_in_per_client": secure["bytes_in_per_client"],
        "neighbours": facts[0]["neighbours"],
        "threshold": facts[0]["threshold"],
        "error_bound": facts[0]["error_bound"],
        "stage_s": stage_s,
        **errors(folders, num_params, rounds),
    }


class StageWatch:
    """Polls a server's /v1/status in a thread and records when a round's
    ``secagg_stage`` changes: the stages' durations as the server lives them."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.changes: list[tuple[float, int, str | None]] = []
        self.thread: threading.Thread | None = None

    def start(self, url: str) -> None:
        self.thread = threading.Thread(target=self._poll, args=(url,), daemon=True)
        self.thread.start()

    def _poll(self, url: str) -> None:
        session = requests.Session()
        last: tuple[int, str | None] | None = None
        while True:
            try:
                status = session.get(f"{url}/v1/status", timeout=5).json()
            except (requests.RequestException, ValueError):
                return  # the server is gone: the run is over
            now = time.perf_counter()
            seen = (int(status["round"]), status.get("secagg_stage"))
            if seen != last:
                self.changes.append((now, *seen))
                last = seen
            if status["phase"] in ("finished", "failed"):
                return
            time.sleep(self.interval)

    def durations(self) -> dict[str, float]:
        """Median seconds per stage over rounds >= 2, each until the next change seen; 0
        for a stage never seen open (keys announced in the previous round's reveals close
        the key stage as the round opens). Round 1 has no announced keys: it would
        make the key stage the first round's alone."""
        if self.thread is not None:
            self.thread.join(30)
        spans: dict[str, list[float]] = {}
        rounds: set[int] = set()
        for (t0, r, stage), (t1, _, _) in itertools.pairwise(self.changes):
            if r >= 2 and stage is not None:
                rounds.add(r)
                spans.setdefault(stage, []).append(t1 - t0)
        return {
            name: statistics.median(spans[name] + [0.0] * (len(rounds) - len(spans[name])))
            if name in spans
            else 0.0
            for name in STAGES
        }


def watched(num_params: int, num_clients: int, base: Path, rounds: int) -> dict[str, float]:
    """One more secure run, with the server's stages watched (apart from the measured
    runs: the polling costs the server a little)."""
    watch = StageWatch(WATCH_INTERVAL)
    round_overhead.run_one(
        num_params,
        num_clients,
        base / f"p{num_params}-n{num_clients}-watched",
        rounds,
        server_options=SECURE,
        on_server=watch.start,
    )
    return watch.durations()


def errors(folders: dict[str, Path], num_params: int, rounds: int) -> dict[str, float]:
    """Largest distance of each run's final model from the exact FedAvg one (float64:
    the initial model plus ``rounds`` x DELTA), and between the two runs."""
    shapes = model_shapes(num_params)
    exact = {
        name: w.astype(np.float64) + rounds * round_overhead.DELTA
        for name, w in random_weights(shapes, seed=0).items()
    }
    final = {
        mode: wire.decode((folder / "out" / "weights.safetensors").read_bytes())
        for mode, folder in folders.items()
    }

    def distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
        return max(float(np.max(np.abs(a[n].astype(np.float64) - b[n]))) for n in exact)

    return {
        "plain_error": distance(final["plain"], exact),
        "secure_error": distance(final["secure"], exact),
        "secure_vs_plain": distance(final["secure"], final["plain"]),
    }


def primitives(num_params: int, num_clients: int) -> dict[str, float]:
    """The secagg work of one round at this P, timed alone on one core (seconds)."""
    params = SecAggParams()
    quantiser = Quantiser(params)
    graph = choose_graph(num_clients, params.dropout_fraction, params.corrupt_fraction)
    change = np.full(num_params, round_overhead.DELTA, dtype=np.float64)
    vector, _ = quantiser.encode(change, 1)
    # decode is timed on an unmasked sum: a masked one has no valid weight.
    unmasked = vector.copy()
    seed = secrets.token_bytes(32)
    shares = shamir.split(secrets.token_bytes(32), graph.t, range(1, graph.k + 1))
    some = dict(list(shares.items())[: graph.t])
    one_mask = timed(lambda: masks.apply_mask(vector, seed, 1), repeat=3)
    return {
        "encode_s": timed(lambda: quantiser.encode(change, 1), repeat=3),
        "mask_s": one_mask,
        "decode_s": timed(lambda: quantiser.decode(unmasked), repeat=3),
        "combine_s": timed(lambda: shamir.combine(some, graph.t), repeat=3),
        # A client adds its self-mask and one pair mask per neighbour.
        "client_masks_s": (1 + graph.k) * one_mask,
        # With no drop-outs the server removes every survivor's self-mask.
        "server_unmask_s": num_clients * one_mask,
    }


def digits(rounds: int, base: Path) -> dict[str, list[float]]:
    """Federated accuracy per round on digits, plain and secure (3 clients, mlp)."""
    accuracy = {}
    for mode, extra in (("plain", []), ("secure", SECURE)):
        out = base / f"digits-{mode}"
        command = [PYTHON, "-m", "fl_kubeflow", "local", "--clients", "3", "--rounds"]
        command += [str(rounds), "--model", "mlp", "--output", str(out), *extra]
        subprocess.run(command, check=True, capture_output=True, timeout=3600)
        history = json.loads((out / "history.json").read_text())
        accuracy[mode] = [r["evaluate"]["metrics"]["accuracy"] for r in history["rounds"]]
        print(f"digits {mode}: {accuracy[mode][-1]:.4f}", flush=True)
    return accuracy


def _mb(value: float) -> str:
    return f"{value / MB:.0f}"


def tables(result: dict[str, Any]) -> list[str]:
    """The section's tables: rounds and memory, where the time goes, errors, digits."""
    rows = result["cells"]
    lines = [
        "| P | N | k, t | plain round s | secure round s | secure / plain | Flower SecAgg+ s "
        "(/ its plain) | server peak RSS MB plain, secure | client peak RSS MB plain, secure |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        flower = FLOWER.get(r["params"]) if r["clients"] == 8 else None
        anchor = f"{flower[0]:.3f} ({flower[1]:.1f}x)" if flower else ""
        lines.append(
            f"| {r['params']:,} | {r['clients']} | {r['neighbours']}, {r['threshold']} "
            f"| {r['plain_round_s']:.3f} | {r['secure_round_s']:.3f} | {r['ratio']:.2f}x "
            f"| {anchor} | {_mb(r['plain_rss'])}, {_mb(r['secure_rss'])} "
            f"| {_mb(r['plain_client_rss'])}, {_mb(r['secure_client_rss'])} |"
        )
    lines += ["", *where_the_time_goes(rows)]
    lines += [
        "",
        f"Quantisation error: the largest distance of a parameter of the final model (after "
        f"{rows[0]['rounds']} rounds) from the exact FedAvg model (float64), against the bound "
        "(rounds x step / 2; bits 32, range 1.0, max_weight 100000). Flower's SecAgg+ "
        f"at its default max_weight: {FLOWER_ERROR:g}.",
        "",
        "| P | N | secure error | plain error (float32) | secure vs plain | bound |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['params']:,} | {r['clients']} | {r['secure_error']:.2e} "
            f"| {r['plain_error']:.2e} | {r['secure_vs_plain']:.2e} "
            f"| {r['rounds'] * r['error_bound']:.2e} |"
        )
    if result.get("digits"):
        acc = result["digits"]
        lines += [
            "",
            f"Digits (`fl-kubeflow local --clients 3 --rounds {len(acc['plain']) - 1} --model "
            "mlp`, with and without `--secure-aggregation`): federated accuracy per round.",
            "",
            "| round | plain | secure |",
            "| ---: | ---: | ---: |",
        ]
        for i, (a, b) in enumerate(zip(acc["plain"], acc["secure"], strict=True)):
            lines.append(f"| {i} | {a:.4f} | {b:.4f} |")
    return lines


def where_the_time_goes(rows: list[dict[str, Any]]) -> list[str]:
    """The stages as the server lived them, its own timings, and the primitives alone."""
    stage_keys = sorted({k for r in rows for k in r["stage_s"]})
    watched_rows = [r for r in rows if r.get("stages")]
    lines = [
        "Where a secure round's time goes. The stages as the server lived them (median "
        "seconds over rounds 2 on, from /v1/status polled every "
        f"{1e3 * WATCH_INTERVAL:g} ms during one more secure run of the cell): keys runs "
        "from the round's opening (sending the model, the clients' fit, their keys), 0 "
        "when the clients announced this round's keys in the last round (the key stage "
        "closes as the round opens: shares then runs from the opening, the model and the "
        "fit included), and shares is 0 too when they sent this round's shares in the last "
        "round's reveals (shares ahead: masked then runs from the opening); reveal runs "
        "to the next round's opening (the reveals, the unmask, the aggregate and the next "
        "model). Then the server's own timings from history.json and the secagg "
        "primitives timed alone on one core at that P (a client adds 1 + k masks of P + 1 "
        "elements; the server, with no drop-outs, removes N self-masks and rebuilds N seeds "
        "from t shares).",
        "",
    ]
    if watched_rows:
        lines += [
            "| P | N | secure - plain s | " + " | ".join(f"{s} s" for s in STAGES) + " |",
            "| ---: | ---: | ---: |" + " ---: |" * len(STAGES),
        ]
        for r in watched_rows:
            cells = " | ".join(f"{r['stages'].get(s, float('nan')):.3f}" for s in STAGES)
            extra = r["secure_round_s"] - r["plain_round_s"]
            lines.append(f"| {r['params']:,} | {r['clients']} | {extra:.3f} | {cells} |")
        lines.append("")
    lines += [
        "| P | N | "
        + "".join(f"server {k} | " for k in stage_keys)
        + "quantise s | one mask s | client's masks s | server's masks s | combine ms "
        "| decode s |",
        "| ---: | ---: |" + " ---: |" * (len(stage_keys) + 6),
    ]
    for r in rows:
        p = r["primitives"]
        own = "".join(f" {r['stage_s'].get(k, float('nan')):.3f} |" for k in stage_keys)
        lines.append(
            f"| {r['params']:,} | {r['clients']} |{own} {p['encode_s']:.4f} | {p['mask_s']:.4f} "
            f"| {p['client_masks_s']:.4f} | {p['server_unmask_s']:.4f} "
            f"| {1e3 * p['combine_s']:.2f} | {p['decode_s']:.4f} |"
        )
    return lines


def goals(result: dict[str, Any]) -> list[str]:
    """Issue 16's goals, each met or missed with its numbers."""
    rows = {(r["params"], r["clients"]): r for r in result["cells"]}
    lines = []

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    for p, goal in GOAL_RATIO.items():
        r = rows.get((p, 8))
        if r is None:
            continue
        flower_s = FLOWER[p][0]
        ratio = statistics.median(r["ratios"])
        secure_s = statistics.median(r["secure_medians"])
        pairs = ", ".join(f"{x:.2f}" for x in r["ratios"])
        lines.append(
            f"- P = {p:,}, N = 8: secure / plain at most {goal:g}x: {verdict(ratio <= goal)} "
            f"(median {ratio:.2f}x of {len(r['ratios'])} back-to-back pairs: {pairs}; the "
            f"table's pair {r['secure_round_s']:.3f} s / {r['plain_round_s']:.3f} s); "
            f"below Flower's SecAgg+ {flower_s} s: {verdict(secure_s < flower_s)} (median "
            f"{secure_s:.3f} s)."
        )
    for p in sorted({p for p, _ in rows}):
        ns = sorted(n for q, n in rows if q == p)
        if len(ns) < 2:
            continue
        low, high = rows[(p, ns[0])], rows[(p, ns[-1])]
        extra_low = low["secure_rss"] - low["plain_rss"]
        extra_high = high["secure_rss"] - high["plain_rss"]
        flat = extra_high - extra_low <= FLAT_MB * MB
        lines.append(
            f"- P = {p:,}: server memory flat from N = {ns[0]} to {ns[-1]}: {verdict(flat)} "
            f"(secure {_mb(low['secure_rss'])} -> {_mb(high['secure_rss'])} MB, plain "
            f"{_mb(low['plain_rss'])} -> {_mb(high['plain_rss'])} MB; secure's extra "
            f"{extra_low / MB:+.0f} -> {extra_high / MB:+.0f} MB, flat: grows < {FLAT_MB:g} MB)."
        )
    worst = max(r["secure_error"] / (r["rounds"] * r["error_bound"]) for r in rows.values())
    lines.append(
        f"- Quantisation error within the bound: {verdict(worst <= 1.0)} (worst "
        f"{worst:.2f} of the bound; per round about {FLOWER_ERROR:g} / "
        f"{rows[next(iter(rows))]['error_bound']:.1e} = "
        f"{FLOWER_ERROR / rows[next(iter(rows))]['error_bound']:.0f}x below Flower's)."
    )
    if result.get("digits"):
        acc = result["digits"]
        gap = abs(acc["secure"][-1] - acc["plain"][-1])
        lines.append(
            f"- Digits after {len(acc['plain']) - 1} rounds within 1 point of plain: "
            f"{verdict(gap <= 0.01)} (plain {acc['plain'][-1]:.4f}, secure "
            f"{acc['secure'][-1]:.4f})."
        )
    return lines


# What the numbers above do not say by themselves (written when this section was made).
ANALYSIS = [
    "Found and fixed with this benchmark: a masked POST, which waits for the stage's end "
    "before it answers, kept its body's receive slot all that time, so the other clients' "
    "masked inputs waited `--slot-patience` (2 s) for a slot: at P = 1M, N = 8 the secure "
    "round took 2.46 s (masked stage 2.38 s), 0.68 s once the slot was freed after the "
    "fold (`body_transport.release_slot`). The slot's array was still held until the "
    "answer, so each waiting request then kept a body's worth of memory (server peak RSS "
    "114 -> 210 MB from N = 8 to 32 at P = 1M); it is let go with the slot: 114 -> 117 MB.",
    "",
    "Where the rest goes: here the N clients share the server's 2 cores, so their masking "
    "adds up on the round: each client quantises its change and adds 1 + k masks of P + 1 "
    "elements (k = 4 at N = 8, 16 at N = 32: the clients' CPU grows as N (1 + k) P, which "
    "on separate machines would run side by side), and the stages add one request round "
    "trip per client (the reveal) beside the masked input, which stands for the update: "
    "the model comes as the answer of the last round's reveal (as a plain update's answer "
    "is the next model), with the inbox of the shares the clients sent in those reveals "
    "for the roster of the keys they announced with their masked inputs (shares ahead: "
    "the round opens past its key and share stages). A client "
    "quantises its change on a worker thread as soon as it has trained and adds its "
    "1 + k masks there too, so its masked POST leaves as soon as they are in. The "
    "server takes each survivor's self mask out of the sum in the reveal "
    "that brings its t-th share (two threads over the sum's stripes), so the unmask after "
    "the last reveal (history.json `unmask_s`) is left the check of every seed against "
    "all its shares, whatever masks remain, and one chunked pass that decodes the sum onto "
    "the base. The load on the machine (other work) moves one pair's ratio by more than "
    "the goals' margins: hence the medians of five pairs.",
]


def section(result: dict[str, Any]) -> list[str]:
    """The whole results.md section."""
    return [
        SECURE_SECTION,
        "",
        f"Made by `.venv/bin/python benchmarks/secure_aggregation.py{result['command']}` on "
        f"{result['finished_at']} UTC in {result['minutes']:.1f} minutes; 1-minute load "
        f"average {result['load_before']:.2f} at the start, {result['load_after']:.2f} at the "
        "end (the machine is shared with other work). Each cell is a plain FedAvg run and a "
        f"secure run (`--secure-aggregation`, defaults: bits 32, range 1.0, max_weight "
        f"100000, dropout_fraction 0.2, corrupt_fraction 0.1) back to back, {ROUNDS} rounds "
        "each, `benchmarks/round_overhead.py client` processes on 127.0.0.1; round s is the "
        "server's median history.json `duration_s` (for a secure round: from its opening "
        "to the next model, keys, shares, masked inputs, reveal and unmask included). "
        "Flower 1.42's SecAgg+ workflow was measured on this machine with N = 8 (issue 16).",
        *machine_lines(),
        "",
        *tables(result),
        "",
        "Goals (issue 16):",
        "",
        *goals(result),
        "",
        *ANALYSIS,
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, nargs="+", default=list(PARAMS))
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--digits", action="store_true", help="also 10 rounds of Keras digits")
    parser.add_argument(
        "--repeat", type=int, default=REPEAT, help="plain/secure pairs of the goals' cells"
    )
    parser.add_argument("--output", type=Path, default=HERE / "results.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--json", type=Path, default=None, help="write the raw results here")
    parser.add_argument("--keep", type=Path, default=None, help="keep run folders here")
    parser.add_argument(
        "--from-json", type=Path, default=None, help="write the section from a --json file"
    )
    args = parser.parse_args()
    if args.from_json:
        lines = section(json.loads(args.from_json.read_text()))
        print("\n".join(lines))
        replace_section(args.output, SECURE_SECTION, lines)
        return 0
    started = time.perf_counter()
    result: dict[str, Any] = {"load_before": load_average(), "cells": []}
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        for p in args.params:
            for n in args.clients:
                row = cell(p, n, base, args.rounds)
                row["primitives"] = primitives(p, n)
                if n in WATCH_CLIENTS:
                    row["stages"] = watched(p, n, base, args.rounds)
                pairs = [row]
                if (p, n) in GOAL_CELLS:
                    pairs += [cell(p, n, base, args.rounds, f"-{i}") for i in range(1, args.repeat)]
                row["ratios"] = [r["ratio"] for r in pairs]
                row["secure_medians"] = [r["secure_round_s"] for r in pairs]
                result["cells"].append(row)
                print(
                    json.dumps({k: v for k, v in row.items() if k != "secure_rounds_s"}), flush=True
                )
        if args.digits:
            result["digits"] = digits(DIGITS_ROUNDS, base)
    result["load_after"] = load_average()
    result["minutes"] = (time.perf_counter() - started) / 60
    result["finished_at"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    options = " ".join(sys.argv[1:])
    result["command"] = f" {options}" if options else ""
    lines = section(result)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if not args.no_write:
        replace_section(args.output, SECURE_SECTION, lines)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
