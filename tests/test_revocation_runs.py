"""Per-client credentials in whole runs: real server and client processes on loopback.

Credentials are issued with ``fl-kubeflow credentials issue``, the server reads the
registry (``--credentials``), each client its own folder (``--credential``). One client
is revoked mid-run by ``fl-kubeflow credentials revoke`` rewriting the registry: its next
request is refused with 401 ``revoked`` and the run completes with the other two (quorum
2). A client presenting another's token gets 403 and an unknown token 401, and neither
changes the result: the final model is the exact FedAvg of the accepted updates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import requests

from fl_kubeflow import wire
from fl_kubeflow.client.numpy_trainers import random_weights
from fl_kubeflow.credentials import Registry, issue, read_credential_dir
from tests.fl_processes import RawClient, run_cli, start_client, start_server, wait_all

SHAPES = [(16, 8), (8,)]
DELTAS, COUNTS = [0.5, -1.0, 2.0], [10, 30, 60]
ROUNDS = 4
# Client 2 trains this long in round 2: the impostors' attempts and the revocation come
# meanwhile, so its round-2 update is its next request after it. Clients 0 and 1 train
# longer in round 4, so the server is still there to refuse it.
SLOW_FIT_S, LAST_FIT_S = 3.0, 4.0


def issue_credentials(tmp_path: Path) -> tuple[Path, Path]:
    registry, out = tmp_path / "registry.json", tmp_path / "credentials"
    done = run_cli(
        "credentials", "issue", "--registry", str(registry), "--out", str(out), "0", "1", "2"
    )
    assert done.returncode == 0, done.stderr
    return registry, out


def test_revoked_client_is_refused_and_the_run_completes_with_quorum(tmp_path: Path) -> None:
    registry, creds = issue_credentials(tmp_path)
    initial = tmp_path / "initial.safetensors"
    initial.write_bytes(wire.encode(random_weights(SHAPES, seed=0)))
    server = start_server(
        tmp_path,
        *("--clients", "3", "--min-clients", "2", "--rounds", str(ROUNDS)),
        *("--credentials", str(registry), "--credentials-reload", "0.1"),
        *("--initial-weights", str(initial), "--grace-period", "5"),
    )
    clients = [
        start_client(
            tmp_path,
            server.url,
            i,
            *("--credential", str(creds / str(i)), "--delta", str(d), "--num-examples", str(n)),
            "--fit-delay",
            str(SLOW_FIT_S if i == 2 else LAST_FIT_S),
            *("--slow-rounds", "2" if i == 2 else str(ROUNDS)),
        )
        for i, (d, n) in enumerate(zip(DELTAS, COUNTS, strict=True))
    ]
    # Any enrolled client may read the status.
    server.wait_for_round(1, token=read_credential_dir(creds / "0").token)

    # While round 2 waits for client 2: client 0's token claiming client 1 (header, then
    # JSON body), a token nobody issued, no token. Each is refused on its headers.
    token0 = read_credential_dir(creds / "0").authorization
    impostor = RawClient(server.url, "1", headers={"Authorization": token0})
    huge = wire.encode({n: v + np.float32(1000) for n, v in random_weights(SHAPES, 0).items()})
    for response in (impostor.update(2, huge, 1_000_000), impostor.join(), impostor.leave()):
        assert (response.status_code, response.json()["error"]) == (403, "forbidden")
    stranger = RawClient(server.url, "1", headers={"Authorization": issue("1").authorization})
    answer = stranger.update(2, huge, 1_000_000)
    assert (answer.status_code, answer.json()["error"]) == (401, "unauthorized")
    anonymous = requests.get(f"{server.url}/v1/status", timeout=10)
    assert (anonymous.status_code, anonymous.json()["error"]) == (401, "unauthorized")
    # What `fl-kubeflow credentials revoke` does: rewrite the registry atomically.
    Registry.load(registry).revoke("2").save(registry)

    codes = wait_all(clients, timeout=120)
    assert server.wait() == 0, server.log()
    assert codes[:2] == [0, 0], [c.log() for c in clients]
    assert codes[2] == 1, clients[2].log()
    assert "401 revoked" in clients[2].log(), clients[2].log()

    history = server.history()
    assert history["status"] == "finished" and history["revoked"] == ["2"]
    contributors = [r["contributors"] for r in history["rounds"][1:]]
    assert contributors == [["0", "1", "2"]] + [["0", "1"]] * (ROUNDS - 1), contributors
    # FedAvg of exactly the accepted updates: round 1 all three, then 0 and 1.
    first = sum(d * n for d, n in zip(DELTAS, COUNTS, strict=True)) / sum(COUNTS)
    rest = sum(d * n for d, n in zip(DELTAS[:2], COUNTS[:2], strict=True)) / sum(COUNTS[:2])
    final = server.final_weights()
    for name, w0 in random_weights(SHAPES, seed=0).items():
        np.testing.assert_allclose(final[name], w0 + first + (ROUNDS - 1) * rest, atol=1e-5)
    # No token (nor its digest) in any log line.
    logs = server.log() + "".join(c.log() for c in clients)
    for i in range(3):
        assert read_credential_dir(creds / str(i)).token not in logs
    for enrolment in Registry.load(registry).enrolments.values():
        assert enrolment.digest not in logs
