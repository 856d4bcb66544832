"""What a server answers to the requests an outside test found harmful (issue 15, item 3).

    .venv/bin/python scripts/hardening_probe.py SRC_DIR

runs ``fl-kubeflow server`` from SRC_DIR (a checkout's ``src/``, first on PYTHONPATH: an
older commit's, from ``git archive``, shows the before) on loopback and prints one line
per probe: out-of-range example counts, a garbage resend, junk initial models, an
unauthenticated 15 MiB upload sending only its headers, a flood of half-sent heads, a
client id with a newline, calls after a failed run, and two help texts. The tests that
hold each behaviour are tests/test_protocol_hardening.py, test_transport_hardening.py and
test_cli_help.py; this is the side-by-side view.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
from safetensors.numpy import save

SRC = sys.argv[1]
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": SRC, "FL_KUBEFLOW_TOKEN": "t" * 43}
AUTH = "Bearer " + "t" * 43


def start(*args):
    d = tempfile.mkdtemp()
    ready = os.path.join(d, "ready")
    p = subprocess.Popen(
        [
            PY,
            "-m",
            "fl_kubeflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--ready-file",
            ready,
            *args,
        ],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(600):
        if os.path.exists(ready) and os.path.getsize(ready):
            break
        time.sleep(0.1)
    with open(ready) as ready_file:
        return p, json.load(ready_file)["port"]


def request(port, method, path, headers=None, body=b"", timeout=10.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    head = [
        f"{method} {path} HTTP/1.1",
        "Host: x",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    s.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except TimeoutError:
        return f"no answer in {timeout:.0f}s"
    finally:
        s.close()
    status = data.split(b" ", 2)[1].decode() if data else "closed"
    text = data.split(b"\r\n\r\n", 1)[-1][:90].decode("latin-1", "replace")
    return f"{status} {text}"


def j(obj):
    return json.dumps(obj).encode()


MODEL = {"w": np.zeros(4, dtype=np.float32)}
A = {"Authorization": AUTH, "X-FL-Client-Id": "a"}

p, port = start("--clients", "1", "--rounds", "3", "--round-timeout", "60")
try:
    request(port, "POST", "/v1/join", A, j({"client_id": "a"}))
    request(port, "POST", "/v1/initial", A, save(MODEL))
    request(port, "GET", "/v1/model?round=1&wait=5", A)

    def up(n, body, rnd=1):
        headers = {**A, "X-FL-Round": str(rnd), "X-FL-Num-Examples": n}
        return request(port, "POST", "/v1/update", headers, body)

    print("num_examples 1e400 header :", up("1" + "0" * 400, save(MODEL)))
    print("num_examples 2**63        :", up(str(2**63), save(MODEL)))
    print("honest update (10)        :", up("10", save(MODEL)))
    request(port, "GET", "/v1/model?round=2&wait=5", A)
    print("garbage resend of round 1 :", up("10", b"garbage!"))
    print(
        "evaluate num_examples 1e400:",
        request(
            port,
            "POST",
            "/v1/evaluate",
            A,
            b'{"client_id": "a", "round": 1, "num_examples": 1' + b"0" * 400 + b', "metrics": {}}',
        ),
    )
    print("junk initial after start  :", request(port, "POST", "/v1/initial", A, b"junk junk junk"))
    # An unauthenticated 15 MiB update: headers only, the body never sent.
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    s.sendall(
        b"POST /v1/update HTTP/1.1\r\nHost: x\r\nX-FL-Client-Id: a\r\nX-FL-Round: 2\r\n"
        + f"X-FL-Num-Examples: 1\r\nContent-Length: {15 << 20}\r\n\r\n".encode()
    )
    try:
        print("unauth 15 MiB, headers only:", s.recv(200).split(b"\r\n")[0].decode() or "closed")
    except TimeoutError:
        print("unauth 15 MiB, headers only: no answer in 3s (waiting for the body)")
    s.close()
    # A flood of half-sent heads, then a probe.
    flood = []
    for i in range(100):
        c = socket.create_connection(("127.0.0.1", port), timeout=3)
        c.sendall(b"POST /v1/upd" if i % 2 else b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        flood.append(c)
    time.sleep(1)
    t0 = time.monotonic()
    try:
        answer = request(port, "GET", "/healthz", timeout=5)
    except OSError as exc:
        answer = f"{type(exc).__name__}: {exc}"
    print(f"/healthz under 100 half-sent heads: {answer[:40]!r} after {time.monotonic() - t0:.1f}s")
    for c in flood:
        c.close()
finally:
    p.kill()

p, port = start("--clients", "2", "--rounds", "1", "--join-timeout", "2")
try:
    request(
        port, "POST", "/v1/join", {"Authorization": AUTH}, j({"client_id": "b"})
    )  # to be told the end
    print(
        "join 'x\\n'                 :",
        request(port, "POST", "/v1/join", {"Authorization": AUTH}, j({"client_id": "x\n"})),
    )
    time.sleep(4)  # the run fails: no initial model within join_timeout
    print(
        "status after failure      :",
        request(port, "GET", "/v1/status", {"Authorization": AUTH})[:60],
    )
    print(
        "evaluate after failure    :",
        request(
            port,
            "POST",
            "/v1/evaluate",
            {"Authorization": AUTH},
            j({"client_id": "b", "round": 1, "num_examples": 1, "metrics": {}}),
        ),
    )
finally:
    p.kill()

p, port = start("--clients", "1", "--rounds", "3", "--round-timeout", "2")
try:
    request(port, "POST", "/v1/join", A, j({"client_id": "a"}))
    request(port, "POST", "/v1/initial", A, save(MODEL))
    request(port, "GET", "/v1/model?round=1&wait=5", A)
    request(
        port, "POST", "/v1/update", {**A, "X-FL-Round": "1", "X-FL-Num-Examples": "10"}, save(MODEL)
    )
    time.sleep(5)  # round 2 gets no update: it times out without the quorum and the run fails
    print("status after round 2 failed:", request(port, "GET", "/v1/status", A)[:70])
    print(
        "evaluate round 1 after it  :",
        request(
            port,
            "POST",
            "/v1/evaluate",
            A,
            j({"client_id": "a", "round": 1, "num_examples": 5, "metrics": {}}),
        ),
    )
finally:
    p.kill()

for cmd in (["local", "--help"], ["client", "--help"]):
    text = subprocess.run(
        [PY, "-m", "fl_kubeflow", *cmd], env=ENV, capture_output=True, text=True
    ).stdout
    flat = " ".join(text.split())
    print(
        " ".join(cmd),
        ": '(default: all clients) (default: None)' in help:",
        "(default: all clients) (default: None)" in flat,
    )
    if "  --shapes" in text:
        i = text.index("  --shapes")
        print("   --shapes help:", " ".join(text[i : i + 400].split())[:200])
