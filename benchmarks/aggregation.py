"""Aggregation micro-benchmark: FedAvg's weighted sum against this machine's memory bandwidth.

Folding one float32 update into a float64 running sum must read the update (4
bytes per parameter) and read and write the sum (8 + 8): 20 bytes of memory
traffic per parameter at the least. The table compares implementations by update
bytes folded per second and by how much of numpy's copy bandwidth their traffic
reaches; a second table times the wire codec on the same model.

    .venv/bin/python benchmarks/aggregation.py
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import numpy as np
from perf_common import model_shapes, timed

from fl_kubeflow import wire
from fl_kubeflow.client.numpy_trainers import random_weights
from fl_kubeflow.recycling import Recycler
from fl_kubeflow.strategies.fedavg import WeightedSum

NUM_UPDATES = 8
# Bytes the weighted sum must move per parameter: read 4 (float32), read 8 + write 8 (float64).
TRAFFIC_PER_PARAM = 20


def copy_bandwidth(num_bytes: int = 400_000_000) -> float:
    """numpy's copy rate on this machine, in bytes copied per second (traffic is twice that)."""
    src = np.ones(num_bytes // 4, dtype=np.float32)
    dst = np.zeros_like(src)
    return num_bytes / timed(lambda: np.copyto(dst, src), repeat=5)


def _naive(updates: list[np.ndarray], weights: list[int]) -> None:
    # What one writes first: each term becomes a model-sized float64 temporary.
    acc = np.zeros(updates[0].shape, dtype=np.float64)
    for update, n in zip(updates, weights, strict=True):
        acc += update.astype(np.float64) * n


def _full_scratch(updates: list[np.ndarray], weights: list[int]) -> None:
    # fl_kubeflow's WeightedSum before #6: a model-sized float64 scratch, written then read.
    acc = np.multiply(updates[0], float(weights[0]), dtype=np.float64)
    scratch = np.empty_like(acc)
    for update, n in zip(updates[1:], weights[1:], strict=True):
        np.multiply(update, float(n), out=scratch, dtype=np.float64)
        np.add(acc, scratch, out=acc)


def _weighted_sum(updates: list[np.ndarray], weights: list[int]) -> None:
    agg = WeightedSum()
    for update, n in zip(updates, weights, strict=True):
        agg.add({"w": update}, n)


IMPLEMENTATIONS: dict[str, Callable[[list[np.ndarray], list[int]], None]] = {
    "numpy, float64 temporaries (acc += w.astype(float64) * n)": _naive,
    "WeightedSum before #6 (model-sized float64 scratch)": _full_scratch,
    "WeightedSum now (256 KiB scratch, in cache)": _weighted_sum,
}


def weighted_sum_seconds(num_params: int, num_clients: int) -> float:
    """Time for WeightedSum to fold N distinct float32 updates, one after another on one
    core, and produce the mean; its sums kept from run to run, as FedAvg keeps them."""
    updates = [np.full(num_params, i + 1, dtype=np.float32) for i in range(num_clients)]
    arrays = Recycler()

    def run() -> None:
        agg = WeightedSum(arrays)
        for i, update in enumerate(updates):
            agg.add({"w": update}, i + 1)
        agg.result()

    return timed(run, repeat=3)


def run(num_params: int = 10_000_000) -> dict[str, Any]:
    """All measurements, as a JSON-ready dict."""
    bandwidth = copy_bandwidth()
    updates = [np.full(num_params, i + 1, dtype=np.float32) for i in range(NUM_UPDATES)]
    counts = list(range(1, NUM_UPDATES + 1))
    rows = []
    for label, fn in IMPLEMENTATIONS.items():
        seconds = timed(lambda fn=fn: fn(updates, counts), repeat=3)
        rows.append(
            {
                "implementation": label,
                "seconds": seconds,
                "update_gb_s": NUM_UPDATES * num_params * 4 / seconds / 1e9,
                "traffic_gb_s": NUM_UPDATES * num_params * TRAFFIC_PER_PARAM / seconds / 1e9,
            }
        )
    model = random_weights(model_shapes(num_params), seed=0)
    message = wire.encode(model)
    buffer = memoryview(np.frombuffer(message, dtype=np.uint8).copy())
    codec = {
        "check (np.isfinite on every tensor)": timed(
            lambda: [bool(np.isfinite(a).all()) for a in model.values()]
        ),
        "encode (wire.encode: one copy, into a new bytes object)": timed(
            lambda: wire.encode(model)
        ),
        "encode (wire.encode_buffer: one copy, into a numpy buffer; the server's with a "
        "half-precision wire)": timed(lambda: wire.encode_buffer(model)),
        "lay out (wire.Frame: header only; with float32 on the wire the server divides the "
        "mean straight into its tensors, no copy)": timed(lambda: wire.Frame(model)),
        "decode (wire.decode of a writable buffer: views)": timed(lambda: wire.decode(buffer)),
        "decode (wire.decode of bytes: one copy)": timed(lambda: wire.decode(message)),
    }
    for half in ("float16", "bfloat16"):
        halved = memoryview(np.frombuffer(wire.encode(model, wire_dtype=half), np.uint8).copy())
        codec[f"encode as {half} (wire.encode_buffer: float32 -> {half} cast)"] = timed(
            lambda half=half: wire.encode_buffer(model, wire_dtype=half)
        )
        codec[f"decode {half} (wire.decode: {half} -> float32 cast)"] = timed(
            lambda half=half, halved=halved: wire.decode(halved, half)
        )
    try:
        from safetensors.numpy import load, save

        codec["safetensors.numpy.save (before #6)"] = timed(lambda: save(model))
        codec["safetensors.numpy.load (before #6)"] = timed(lambda: load(message))
    except ImportError:
        pass
    return {
        "params": num_params,
        "updates": NUM_UPDATES,
        "copy_bytes_per_s": bandwidth,
        "rows": rows,
        "codec_s": codec,
        "model_bytes": 4 * num_params,
    }


def markdown(result: dict[str, Any]) -> list[str]:
    """The result as markdown lines (two tables)."""
    copy_gb_s = result["copy_bytes_per_s"] / 1e9
    lines = [
        f"numpy copy bandwidth: {copy_gb_s:.1f} GB/s copied ({2 * copy_gb_s:.1f} GB/s of "
        f"read + write traffic). {result['updates']} float32 updates of "
        f"{result['params'] / 1e6:g}M parameters folded into a float64 sum; traffic counts "
        f"the {TRAFFIC_PER_PARAM} bytes per parameter that any float64 accumulation must move.",
        "",
        "| implementation | time for 8 updates (s) | update GB/s | traffic GB/s | "
        "traffic / copy traffic |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['implementation']} | {row['seconds']:.3f} | {row['update_gb_s']:.2f} | "
            f"{row['traffic_gb_s']:.1f} | {row['traffic_gb_s'] / (2 * copy_gb_s):.0%} |"
        )
    mb = result["model_bytes"] / 1e6
    lines += [
        "",
        f"Wire codec on the same model ({mb:.0f} MB, 4 tensors):",
        "",
        "| operation | ms | GB/s |",
        "| --- | ---: | ---: |",
    ]
    for label, seconds in result["codec_s"].items():
        lines.append(
            f"| {label} | {seconds * 1e3:.2f} | {result['model_bytes'] / seconds / 1e9:.1f} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--json", action="store_true", help="print the raw result as JSON")
    args = parser.parse_args()
    result = run(args.params)
    print(json.dumps(result, indent=1) if args.json else "\n".join(markdown(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
