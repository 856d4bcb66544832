"""What held connections cost the socket loop: request latency with N idle connections.

Starts the WSGI server in this process (waitress through ``start_http_server``, a
bare hello app), opens N keep-alive connections that each make one request and then
stay idle, and times sequential requests on one more connection, and the server's
CPU (this process's, the idle clients costing nothing) per request. With waitress's
own loop each turn asks every held channel readable()/writable(), so a request's few
turns cost in proportion to N; with the epoll loop (server/event_loop.py) they
should not. Run against another tree with PYTHONPATH=<tree>/src.

    python benchmarks/loop_turns.py --held 0 3000 --requests 300
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import socket
import statistics
import sys
import time

from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.http_server import start_http_server


def _hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def _raise_open_files(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _hold(port: int, count: int) -> list[socket.socket]:
    """``count`` connections, each answered once and then left open."""
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(request)
        answer = b""
        while not answer.endswith(b"hello"):
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError("a held connection was closed by the server")
            answer += chunk
        held.append(sock)
    return held


def measure(held: int, requests: int, loops: int) -> dict:
    config = ServerConfig(
        num_clients=held + 16,
        num_rounds=1,
        host="127.0.0.1",
        port=0,
        io_threads=loops,
        max_pending_connections=held + 64,  # no head check here: all are strangers
        head_timeout=600.0,
    )
    server = start_http_server(_hello, config)
    try:
        started = time.monotonic()
        sockets = _hold(server.port, held)
        hold_s = time.monotonic() - started
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        times = []
        cpu_before = time.process_time()
        for _ in range(requests):
            begun = time.perf_counter()
            conn.request("GET", "/")
            response = conn.getresponse()
            assert response.read() == b"hello"
            times.append(time.perf_counter() - begun)
        cpu = time.process_time() - cpu_before
        conn.close()
        for sock in sockets:
            sock.close()
    finally:
        server.close()
    return {
        "held": held,
        "loops": loops,
        "hold_s": round(hold_s, 2),
        "median_ms": round(1000 * statistics.median(times), 2),
        "p90_ms": round(1000 * sorted(times)[int(0.9 * len(times))], 2),
        "cpu_ms_per_request": round(1000 * cpu / requests, 2),
        "load": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held", type=int, nargs="+", default=[0, 3000])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--io-threads", type=int, default=2)
    args = parser.parse_args()
    _raise_open_files(2 * max(args.held) + 256)
    import fl_kubeflow

    print(f"# tree: {os.path.dirname(fl_kubeflow.__file__)}", file=sys.stderr)
    for held in args.held:
        print(json.dumps(measure(held, args.requests, args.io_threads)), flush=True)


if __name__ == "__main__":
    main()
