"""Speed of secure aggregation's primitives (fl_kubeflow.secagg), as a markdown table.

What each side of a SecAgg+ round spends outside HTTP: the masks (AES-128-CTR
keystream added in place; a client adds k + 1 streams, the server removes one per
survivor and the pair masks of the dropped), the fixed-point encoding and decoding,
the model as a vector, Shamir sharing at the graph sizes choose_graph gives, and the
key agreement and share encryption. Each row is the median of ``--repeat`` calls
after a warm-up, as wall time and as this process's CPU time (on a shared machine
the wall time includes waiting for a core; the CPU time does not). Prints only.

    .venv/bin/python benchmarks/secagg_primitives.py [--params 10000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import functools
import secrets
import statistics
import time
from collections.abc import Callable
from importlib import metadata

import numpy as np
from cryptography.hazmat.backends.openssl import backend
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from perf_common import load_average, machine_lines

from fl_kubeflow.secagg import keys, masks, shamir
from fl_kubeflow.secagg.params import SecAggParams, _choose, choose_graph
from fl_kubeflow.secagg.quantise import Quantiser
from fl_kubeflow.secagg.vector import Layout

GRAPH_SIZES = (8, 32, 100, 1000)
# Streams in the apply_masks rows: a client's k + 1 at n = 8 (k = 4) is 5; 8 is N = 8's
# self masks at the server.
STREAMS = 8
Case = tuple[str, Callable[[], object], int, str]


def measure(case: Case, repeat: int) -> str:
    """One table row: what, wall and CPU milliseconds, GB/s of the bytes by CPU time, note."""
    name, fn, nbytes, note = case
    fn()
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    rate = f"{nbytes / max(cpu, 1e-9) / 1e9:.2f}" if nbytes else ""
    return f"| {name} | {wall * 1e3:.3f} | {cpu * 1e3:.3f} | {rate} | {note} |"


def vector_cases(num_params: int) -> list[Case]:
    """The per-element work: masks, keystream alone, encoding, the vector."""
    seeds = [secrets.token_bytes(32) for _ in range(STREAMS)]
    cases: list[Case] = []
    for dtype in (np.uint32, np.uint64):
        vector = np.zeros(num_params, dtype)
        fn = functools.partial(masks.apply_mask, vector, seeds[0], 1)
        cases.append((f"apply_mask {vector.dtype}", fn, vector.nbytes, ""))
    vector = np.zeros(num_params, np.uint32)
    streams = [(seed, 1) for seed in seeds]

    def one_by_one() -> None:
        for seed in seeds:
            masks.apply_mask(vector, seed, 1)

    note, nbytes = f"{STREAMS} streams", STREAMS * vector.nbytes
    cases.append(("apply_mask each, uint32", one_by_one, nbytes, note))
    cases.append(
        ("apply_masks, uint32", functools.partial(masks.apply_masks, vector, streams), nbytes, note)
    )
    key = seeds[0][: masks.STREAM_KEY_BYTES]
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    chunk = bytes(masks.CHUNK * 4)
    out = bytearray(len(chunk) + 15)
    steps = num_params * 4 // len(chunk)

    def keystream() -> None:
        for _ in range(steps):
            encryptor.update_into(chunk, out)

    cases.append(("AES-128-CTR keystream alone", keystream, steps * len(chunk), "in cache"))
    quantiser = Quantiser(SecAggParams())
    change = np.random.default_rng(0).normal(0.0, 0.01, num_params)
    encoded, _ = quantiser.encode(change, 100)
    model = {"w": np.zeros(num_params, np.float32)}
    base = {"w": np.ones(num_params, np.float32)}
    layout = Layout.of(model)
    cases += [
        ("Quantiser.encode (32 bits)", lambda: quantiser.encode(change, 100), 0, ""),
        ("Quantiser.decode (32 bits)", lambda: quantiser.decode(encoded), 0, ""),
        ("Layout.change", lambda: layout.change(model, base), 0, "float32 model"),
        ("Layout.apply", lambda: layout.apply(base, change), 0, "float32 model"),
    ]
    return cases


def graph_cases() -> list[Case]:
    """Shamir and choose_graph at the graph sizes of GRAPH_SIZES clients."""
    secret = secrets.token_bytes(32)
    cases: list[Case] = []
    for n in GRAPH_SIZES:
        graph = choose_graph(n, 0.2, 0.1)
        xs = range(1, graph.k + 1)
        shares = shamir.split(secret, graph.t, xs)
        least = dict(list(shares.items())[: graph.t])
        note = f"n = {n}: k = {graph.k}, t = {graph.t}"
        cases += [
            ("shamir.split", lambda g=graph, x=xs: shamir.split(secret, g.t, x), 0, note),
            ("shamir.combine, t shares", lambda s=least, g=graph: shamir.combine(s, g.t), 0, note),
            (
                "shamir.combine, k (checked)",
                lambda s=shares, g=graph: shamir.combine(s, g.t),
                0,
                note,
            ),
        ]

    def uncached() -> None:
        _choose.cache_clear()
        choose_graph(1000, 0.2, 0.1)

    cases.append(("choose_graph, uncached", uncached, 0, "n = 1000"))
    return cases


def key_cases() -> list[Case]:
    """Per-neighbour work: agreement, seeds, share encryption."""
    a, b = keys.generate(), keys.generate()
    share = bytes(shamir.SHARE_BYTES)
    sealed = keys.encrypt_shares(a.private, b.public, 1, "a", "b", share, share)
    return [
        ("keys.generate", keys.generate, 0, ""),
        ("keys.pair_seed", lambda: keys.pair_seed(a.private, b.public, 1), 0, ""),
        (
            "keys.encrypt_shares",
            lambda: keys.encrypt_shares(a.private, b.public, 1, "a", "b", share, share),
            0,
            "",
        ),
        (
            "keys.decrypt_shares",
            lambda: keys.decrypt_shares(b.private, a.public, 1, "a", "b", sealed),
            0,
            "",
        ),
    ]


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=10_000_000, help="vector length P")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per row (median)")
    args = parser.parse_args()
    load_before = load_average()
    cases = [*vector_cases(args.params), *graph_cases(), *key_cases()]
    rows = [measure(case, args.repeat) for case in cases]
    load_after = load_average()
    print(f"## Secure aggregation primitives (P = {args.params:,})\n")
    print(*machine_lines(), sep="\n")
    print(f"- cryptography {metadata.version('cryptography')}, {backend.openssl_version_text()}")
    print(f"- 1-minute load {load_before:.1f} before, {load_after:.1f} after\n")
    print("| what | wall ms | CPU ms | GB/s (CPU) | note |")
    print("| --- | --- | --- | --- | --- |")
    print(*rows, sep="\n")


if __name__ == "__main__":
    main()
