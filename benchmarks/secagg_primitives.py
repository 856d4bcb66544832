"""Speed of secure aggregation's primitives (fl_kubeflow.secagg), as a markdown table.

What each side of a SecAgg+ round spends outside HTTP: the masks (AES-256-CTR
keystream added in place; a client adds k + 1 streams, the server removes one per
survivor and the pair masks of the dropped), the fixed-point encoding and decoding,
the model as a vector, Shamir sharing at the graph sizes choose_graph gives, and the
key agreement and share encryption. Median of ``--repeat`` calls after a warm-up.
Prints only; nothing is written.

    .venv/bin/python benchmarks/secagg_primitives.py [--params 10000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import secrets
from collections.abc import Callable
from importlib import metadata

import numpy as np
from cryptography.hazmat.backends.openssl import backend
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from perf_common import load_average, machine_lines, timed

from fl_kubeflow.secagg import keys, masks, shamir
from fl_kubeflow.secagg.params import SecAggParams, _choose, choose_graph
from fl_kubeflow.secagg.quantise import Quantiser
from fl_kubeflow.secagg.vector import Layout

GRAPH_SIZES = (8, 32, 100, 1000)


def row(name: str, seconds: float, nbytes: int | None = None, note: str = "") -> str:
    """One table row: what, milliseconds, GB/s of ``nbytes`` if given, a note."""
    rate = f"{nbytes / seconds / 1e9:.2f}" if nbytes else ""
    return f"| {name} | {seconds * 1e3:.3f} | {rate} | {note} |"


def vector_rows(num_params: int, repeat: int) -> list[str]:
    """The per-element work: masks, keystream alone, encoding, the vector."""
    rows = []
    seed = secrets.token_bytes(32)
    for dtype in (np.uint32, np.uint64):
        vector = np.zeros(num_params, dtype)
        seconds = timed(lambda v=vector: masks.apply_mask(v, seed, 1), repeat)
        rows.append(row(f"apply_mask {np.dtype(dtype).name}", seconds, vector.nbytes))
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    chunk = bytes(masks.CHUNK * 4)
    out = bytearray(len(chunk) + 15)
    steps = num_params * 4 // len(chunk)

    def keystream() -> None:
        for _ in range(steps):
            encryptor.update_into(chunk, out)

    rows.append(row("AES-256-CTR keystream alone", timed(keystream, repeat), steps * len(chunk)))
    quantiser = Quantiser(SecAggParams())
    change = np.random.default_rng(0).normal(0.0, 0.01, num_params)
    encoded, _ = quantiser.encode(change, 100)
    rows.append(
        row("Quantiser.encode (32 bits)", timed(lambda: quantiser.encode(change, 100), repeat))
    )
    rows.append(row("Quantiser.decode (32 bits)", timed(lambda: quantiser.decode(encoded), repeat)))
    model = {"w": np.zeros(num_params, np.float32)}
    base = {"w": np.ones(num_params, np.float32)}
    layout = Layout.of(model)
    rows.append(row("Layout.change", timed(lambda: layout.change(model, base), repeat)))
    rows.append(row("Layout.apply", timed(lambda: layout.apply(base, change), repeat)))
    return rows


def graph_rows(repeat: int) -> list[str]:
    """Shamir and choose_graph at the graph sizes of GRAPH_SIZES clients."""
    rows = []
    secret = secrets.token_bytes(32)
    for n in GRAPH_SIZES:
        graph = choose_graph(n, 0.2, 0.1)
        xs = range(1, graph.k + 1)
        shares = shamir.split(secret, graph.t, xs)
        at_threshold = dict(list(shares.items())[: graph.t])
        note = f"n = {n}: k = {graph.k}, t = {graph.t}"
        cases: list[tuple[str, Callable[[], object]]] = [
            ("shamir.split", lambda g=graph, x=xs: shamir.split(secret, g.t, x)),
            ("shamir.combine, t shares", lambda s=at_threshold, g=graph: shamir.combine(s, g.t)),
            (
                "shamir.combine, k shares (checked)",
                lambda s=shares, g=graph: shamir.combine(s, g.t),
            ),
        ]
        rows += [row(name, timed(fn, repeat), note=note) for name, fn in cases]

    def uncached() -> None:
        _choose.cache_clear()
        choose_graph(1000, 0.2, 0.1)

    rows.append(row("choose_graph, uncached", timed(uncached, repeat), note="n = 1000"))
    return rows


def key_rows(repeat: int) -> list[str]:
    """Per-neighbour work: agreement, seeds, share encryption."""
    a, b = keys.generate(), keys.generate()
    share = bytes(shamir.SHARE_BYTES)
    sealed = keys.encrypt_shares(a.private, b.public, 1, "a", "b", share, share)
    cases: list[tuple[str, Callable[[], object]]] = [
        ("keys.generate", keys.generate),
        ("keys.pair_seed", lambda: keys.pair_seed(a.private, b.public, 1)),
        (
            "keys.encrypt_shares",
            lambda: keys.encrypt_shares(a.private, b.public, 1, "a", "b", share, share),
        ),
        (
            "keys.decrypt_shares",
            lambda: keys.decrypt_shares(b.private, a.public, 1, "a", "b", sealed),
        ),
    ]
    return [row(name, timed(fn, repeat)) for name, fn in cases]


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=10_000_000, help="vector length P")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per row (median)")
    args = parser.parse_args()
    load_before = load_average()
    rows = [
        *vector_rows(args.params, args.repeat),
        *graph_rows(args.repeat),
        *key_rows(args.repeat),
    ]
    print(f"## Secure aggregation primitives (P = {args.params:,})\n")
    print(*machine_lines(), sep="\n")
    print(f"- cryptography {metadata.version('cryptography')}, {backend.openssl_version_text()}")
    load_after = load_average()
    print(f"- 1-minute load {load_before:.1f} before, {load_after:.1f} after\n")
    print("| what | ms | GB/s | note |")
    print("| --- | --- | --- | --- |")
    print(*rows, sep="\n")


if __name__ == "__main__":
    main()
