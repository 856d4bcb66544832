"""The original example's exchange, re-implemented minimally, to measure our speed-up over it.

The federated-learning example this project grew from moved weights as JSON lists of
floats: the server answered the global model as JSON, and each client posted its
weights as ``json.dumps(weights.tolist())`` in an urlencoded form field; the server
``json.loads``-ed each update back into numpy, scaled it by its example count, kept
it, and summed the scaled updates when all had arrived. This module is that
protocol and nothing more, on Flask's own threaded server (what ``app.run`` gives):

* ``GET /weights?round=k`` blocks until round k is open (a condition variable, not
  polling, so its latency is not counted against it) and answers
  ``{"round", "finished", "weights": [[...], ...]}``; the JSON is made once per round,
  not once per client (kinder to the original than a naive re-encode per request).
* ``POST /update``: form fields ``weights`` (JSON), ``num_examples``, ``client_id``, ``round``.

Round time is measured as ours is: from opening a round to having the next global
model ready to serve.

    .venv/bin/python benchmarks/original_protocol.py --params 100000 --clients 2 8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from perf_common import (
    HERE,
    PYTHON,
    client_summaries,
    model_shapes,
    peak_rss_bytes,
    processes,
    start_clients,
    wait_for_file,
)

ROUNDS = 5
DELTA = 0.001


class OriginalServer:
    """The run's state: global weights, the round's scaled updates, per-round records."""

    def __init__(self, weights: list[np.ndarray], num_clients: int, num_rounds: int) -> None:
        self.weights = weights
        self.num_clients = num_clients
        self.num_rounds = num_rounds
        self.round = 1
        self.finished = False
        self.updates: list[tuple[int, list[np.ndarray]]] = []
        self.cond = threading.Condition()
        self.started = time.monotonic()
        self.model_json = self._model_json()
        self.records: list[dict[str, Any]] = []
        self.bytes_in = 0
        self.bytes_out = 0
        self.left: set[str] = set()

    def _model_json(self) -> bytes:
        return json.dumps(
            {
                "round": self.round,
                "finished": self.finished,
                "weights": [w.tolist() for w in self.weights],
            }
        ).encode()

    def model(self, server_round: int, client_id: str, wait: float) -> bytes | None:
        deadline = time.monotonic() + wait
        with self.cond:
            while not self.finished and self.round < server_round:
                if not self.cond.wait(max(0.0, deadline - time.monotonic())):
                    return None
            if not self.finished:
                self.bytes_out += len(self.model_json)
            return self.model_json

    def leave(self, client_id: str) -> None:
        with self.cond:
            self.left.add(client_id)
            self.cond.notify_all()

    def update(self, server_round: int, num_examples: int, weights_json: str, size: int) -> None:
        # The original's server side: JSON lists back to numpy, scaled by the example count.
        arrays = [np.array(w, dtype=np.float32) for w in json.loads(weights_json)]
        scaled = [w * num_examples for w in arrays]
        with self.cond:
            if server_round != self.round or self.finished:
                raise ValueError(f"round {server_round} is not open")
            self.updates.append((num_examples, scaled))
            self.bytes_in += size
            if len(self.updates) == self.num_clients:
                self._aggregate()

    def _aggregate(self) -> None:
        total = sum(n for n, _ in self.updates)
        self.weights = [
            (sum(update[i] for _, update in self.updates) / total).astype(np.float32)
            for i in range(len(self.weights))
        ]
        self.updates = []
        if self.round >= self.num_rounds:
            self.finished = True
        else:
            self.round += 1
        self.model_json = self._model_json()
        now = time.monotonic()
        self.records.append(
            {
                "duration_s": now - self.started,
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
            }
        )
        self.started, self.bytes_in, self.bytes_out = now, 0, 0
        self.cond.notify_all()


def server_main(argv: list[str]) -> int:
    """Serve one run of the original protocol, then write its history and exit."""
    from flask import Flask, Response, request
    from werkzeug.serving import make_server

    parser = argparse.ArgumentParser(prog="original_protocol.py server")
    parser.add_argument("--params", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(s).astype(np.float32) for s in model_shapes(args.params)]
    state = OriginalServer(weights, args.clients, args.rounds)
    app = Flask("original")
    # Flask 3.1 caps form fields at 500 kB; the original ran before that cap existed.
    app.config["MAX_FORM_MEMORY_SIZE"] = None

    @app.get("/weights")
    def get_weights() -> Response:
        body = state.model(
            int(request.args["round"]), request.args["client_id"], float(request.args["wait"])
        )
        if body is None:
            return Response(status=204)
        return Response(body, mimetype="application/json")

    @app.post("/update")
    def post_update() -> Response:
        size = request.content_length or 0
        state.update(
            int(request.form["round"]),
            int(request.form["num_examples"]),
            request.form["weights"],
            size,
        )
        return Response(b'{"accepted": true}', mimetype="application/json")

    @app.post("/leave")
    def post_leave() -> Response:
        # Said after the final model arrived: the server may stop once every client left.
        state.leave(request.form["client_id"])
        return Response(b"{}", mimetype="application/json")

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    args.ready_file.write_text(json.dumps({"port": server.server_port}))
    deadline = time.monotonic() + args.timeout
    with state.cond:
        while len(state.left) < args.clients and time.monotonic() < deadline:
            state.cond.wait(1.0)
    server.shutdown()
    args.history.write_text(
        json.dumps({"rounds": state.records, "server_peak_rss_bytes": peak_rss_bytes()})
    )
    return 0 if len(state.left) == args.clients else 1


def client_main(argv: list[str]) -> int:
    """One client of the original protocol: fetch JSON, add a delta, post it as a form."""
    import requests

    parser = argparse.ArgumentParser(prog="original_protocol.py client")
    parser.add_argument("--server", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--summary", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    session = requests.Session()
    deadline = time.monotonic() + args.timeout
    server_round = 1
    while time.monotonic() < deadline:
        params = {"round": server_round, "client_id": args.client_id, "wait": 30}
        response = session.get(f"{args.server}/weights", params=params, timeout=args.timeout)
        response.raise_for_status()
        if response.status_code == 204:
            continue
        model = response.json()
        if model["finished"]:
            args.summary.write_text(json.dumps({"peak_rss_bytes": peak_rss_bytes()}))
            # The last goodbye may find the server already stopping: its answer is not needed.
            with contextlib.suppress(requests.RequestException):
                session.post(f"{args.server}/leave", data={"client_id": args.client_id}, timeout=30)
            return 0
        weights = [np.array(w, dtype=np.float32) + np.float32(DELTA) for w in model["weights"]]
        form = {
            "weights": json.dumps([w.tolist() for w in weights]),
            "num_examples": "1",
            "client_id": args.client_id,
            "round": str(model["round"]),
        }
        session.post(f"{args.server}/update", data=form, timeout=args.timeout).raise_for_status()
        server_round = model["round"] + 1
    return 1


def run_one(
    num_params: int, num_clients: int, folder: Path, rounds: int = ROUNDS, timeout: float = 600.0
) -> dict[str, Any]:
    """One run of the original protocol: a server process and N client processes."""
    folder.mkdir(parents=True, exist_ok=True)
    ready, history_path = folder / "ready.json", folder / "history.json"
    script = str(HERE / "original_protocol.py")
    started = time.perf_counter()
    with processes(folder) as procs:
        server = procs.start(
            "server",
            [
                PYTHON,
                script,
                "server",
                "--params",
                str(num_params),
                "--clients",
                str(num_clients),
                "--rounds",
                str(rounds),
                "--ready-file",
                str(ready),
                "--history",
                str(history_path),
                "--timeout",
                str(timeout),
            ],
        )
        wait_for_file(ready, server, 60)
        url = f"http://127.0.0.1:{json.loads(ready.read_text())['port']}"
        start_clients(procs, folder, Path(script), url, num_clients, timeout)
        procs.wait_all(timeout)
    wall = time.perf_counter() - started
    history = json.loads(history_path.read_text())
    records = history["rounds"]
    clients = client_summaries(folder, num_clients)
    return {
        "params": num_params,
        "clients": num_clients,
        "rounds": len(records),
        "median_round_s": statistics.median(r["duration_s"] for r in records),
        "bytes_in_per_client": statistics.median(r["bytes_in"] for r in records) / num_clients,
        "bytes_out_per_client": statistics.median(r["bytes_out"] for r in records) / num_clients,
        "model_bytes": 4 * num_params,
        "server_peak_rss": history["server_peak_rss_bytes"],
        "client_peak_rss_max": max(c["peak_rss_bytes"] for c in clients),
        "wall_s": wall,
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("server", "client"):
        command = server_main if sys.argv[1] == "server" else client_main
        return command(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, nargs="+", default=[100_000])
    parser.add_argument("--clients", type=int, nargs="+", default=[2])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for p in args.params:
            for n in args.clients:
                print(json.dumps(run_one(p, n, Path(tmp) / f"p{p}-n{n}", args.rounds)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
