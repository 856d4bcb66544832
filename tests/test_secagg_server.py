"""The server's side of secure aggregation (docs/secure_aggregation.md), on loopback.

A real server in this process (the Federation, its app and waitress with the head
check, as ``serve`` builds them) and clients scripted with the ``secagg`` package:
each does exactly the steps of the doc, and may stop after any stage, so a test can
drop it where it needs. The clients' own library (``client/secure_aggregation.py``)
is tested in test_secagg_client.py; real processes in test_secagg_runs.py.
"""

from __future__ import annotations

import http.client
import json
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from fl_kubeflow import wire
from fl_kubeflow.auth import new_token
from fl_kubeflow.client.federated_client import FederatedClient
from fl_kubeflow.client.numpy_trainers import DeltaTrainer
from fl_kubeflow.protocol import SECAGG_MASKED_TENSOR, Phase
from fl_kubeflow.recycling import Recycler
from fl_kubeflow.secagg import graph, keys, masks, messages, shamir
from fl_kubeflow.secagg.params import SecAggParams, choose_graph
from fl_kubeflow.secagg.quantise import Quantiser
from fl_kubeflow.secagg.vector import Layout
from fl_kubeflow.server import checkpoint, checkpoint_state
from fl_kubeflow.server.app import create_app
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.federation import ROSTER_IN_ANSWER_CLIENTS, Federation
from fl_kubeflow.server.header_check import check_request_head
from fl_kubeflow.server.http_server import start_http_server
from fl_kubeflow.server.identity import identities_for
from fl_kubeflow.server.secure_round import STRIPE, ModularSum, SecureRound
from fl_kubeflow.strategies import FedAvg
from tests.fl_processes import RawClient

WAIT = 30.0  # how long a stage's POST or GET may hold: bounds a broken run only
W0 = {
    "dense/kernel": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    "dense/bias": np.zeros(4, dtype=np.float32),
}
STAGES = ("keys", "shares", "masked", "reveal")


@dataclass
class Server:
    """A secure run served on loopback, and its Federation to look inside."""

    federation: Federation
    url: str
    token: str
    thread: threading.Thread
    close: Any

    def client(self, client_id: str) -> Scripted:
        raw = RawClient(self.url, client_id, headers={"Authorization": f"Bearer {self.token}"})
        return Scripted(raw)

    def secure_round(self) -> SecureRound:
        """The open round's SecureRound, once the driver has opened one."""
        federation = self.federation

        def opened() -> SecureRound | None:
            current = federation._current
            return current.secure if current is not None else None

        with federation._cond:
            secure = federation._cond.wait_for(opened, WAIT)
        assert secure is not None
        return secure

    def wait_end(self) -> None:
        self.thread.join(WAIT * 2)
        assert not self.thread.is_alive()


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start secure runs (``serve(n, **options)``); every one is closed at the end."""
    closing: list[Any] = []

    def start(num_clients: int, params: SecAggParams | None = None, **options: Any) -> Server:
        token = new_token()
        config = ServerConfig(
            num_clients=num_clients,
            num_rounds=options.pop("num_rounds", 1),
            host="127.0.0.1",
            port=0,
            token=token,
            join_timeout=WAIT,
            round_timeout=options.pop("round_timeout", WAIT),
            poll_timeout=WAIT,
            grace_period=0.2,  # the run ends soon after its clients heard it did
            max_update_bytes=1 << 16,
            secure_aggregation=params or SecAggParams(),
            **options,
        )
        federation = Federation(config, FedAvg(), initial_weights=W0)
        identities = identities_for(config)
        head_check = lambda *a: check_request_head(federation, identities, *a)  # noqa: E731
        running = start_http_server(create_app(federation, config, identities), config, head_check)
        closing.append(running.close)
        thread = threading.Thread(target=federation.run, daemon=True)
        thread.start()
        return Server(federation, f"http://127.0.0.1:{running.port}", token, thread, running.close)

    yield start
    for close in closing:
        close()


@dataclass
class Scripted:
    """One client doing docs/secure_aggregation.md's steps with the secagg package.

    ``run(stop_after=...)`` goes through the round and stops (leaving the run, so the
    stage closes without waiting for its timeout) after the named stage.
    """

    raw: RawClient
    change: np.ndarray | None = None
    weight: int = 1
    # How it drops out when told to stop: leave the run (None), or this (e.g. a revocation).
    drop: Callable[[], Any] | None = None

    @property
    def cid(self) -> str:
        return self.raw.client_id

    def post(self, path: str, body: dict[str, Any], wait: float = WAIT) -> requests.Response:
        return self.raw.session.post(
            f"{self.raw.url}{path}",
            params={"wait": wait},
            json={"client_id": self.cid, **body},
            headers=self.raw._h(),
            timeout=wait + 30,
        )

    def post_masked(
        self,
        server_round: int,
        body: bytes,
        wait: float = WAIT,
        extra: dict[str, str] | None = None,
    ) -> requests.Response:
        headers = self.raw._h(
            {"X-FL-Round": str(server_round), "X-FL-Metrics": '{"loss": 1}', **(extra or {})}
        )
        return self.raw.session.post(
            f"{self.raw.url}/v1/secagg/masked",
            params={"wait": wait},
            data=body,
            headers=headers,
            timeout=wait + 30,
        )

    def fetch(self, server_round: int = 1) -> None:
        """The round's model and config (``round`` is the one the server handed out)."""
        response = self.raw.model(server_round, wait=WAIT)
        assert response.status_code == 200, response.text
        self.round = int(response.headers["X-FL-Round"])
        self.config = json.loads(response.headers["X-FL-Config"])
        self.params = SecAggParams.from_config(self.config["secagg"])
        self.base = wire.decode(response.content)
        self.layout = Layout.of(self.base)

    def get(self, path: str, wait: float = WAIT) -> requests.Response:
        return self.raw.session.get(
            f"{self.raw.url}{path}",
            params={"round": self.round, "wait": wait},
            headers=self.raw._h(),
            timeout=wait + 30,
        )

    def answer(self, response: requests.Response, path: str) -> dict[str, Any]:
        """A stage POST's 200 answer, or (202) the GET of the next stage's input."""
        if response.status_code == 202:
            response = self.get(path)
        assert response.status_code == 200, response.text
        return response.json()

    def post_keys(self, wait: float = WAIT) -> requests.Response:
        self.c, self.s = keys.generate(), keys.generate()
        body = {
            "round": self.round,
            "encryption_key": messages.encode(self.c.public),
            "masking_key": messages.encode(self.s.public),
        }
        return self.post("/v1/secagg/keys", body, wait)

    def take_roster(self, roster: dict[str, Any]) -> None:
        """Check the roster as a client must, and compute this client's neighbours."""
        ids = [e["client_id"] for e in roster["roster"]]
        self.keys = {
            e["client_id"]: (
                messages.decode(e["encryption_key"], keys.KEY_BYTES, "c"),
                messages.decode(e["masking_key"], keys.KEY_BYTES, "s"),
            )
            for e in roster["roster"]
        }
        assert self.keys[self.cid] == (self.c.public, self.s.public)
        chosen = choose_graph(len(ids), self.params.dropout_fraction, self.params.corrupt_fraction)
        assert (roster["neighbours"], roster["threshold"]) == (chosen.k, chosen.t)
        self.t = chosen.t
        seed = graph.roster_seed([(c, *self.keys[c]) for c in ids])
        self.neighbours = graph.neighbours(ids, chosen.k, seed)[self.cid]
        self.position = {c: i + 1 for i, c in enumerate(ids)}

    def ciphertexts(self) -> dict[str, str]:
        """This client's shares of b and of its s key, one ciphertext per neighbour."""
        self.b = secrets.token_bytes(32)
        xs = [self.position[j] for j in self.neighbours]
        b_shares = shamir.split(self.b, self.t, xs)
        s_shares = shamir.split(self.s.private, self.t, xs)
        return {
            j: messages.encode(
                keys.encrypt_shares(
                    self.c.private,
                    self.keys[j][0],
                    self.round,
                    self.cid,
                    j,
                    b_shares[self.position[j]],
                    s_shares[self.position[j]],
                )
            )
            for j in self.neighbours
        }

    def post_shares(self, shares: dict[str, str], wait: float = WAIT) -> requests.Response:
        return self.post("/v1/secagg/shares", {"round": self.round, "shares": shares}, wait)

    def take_inbox(self, inbox: dict[str, Any]) -> None:
        self.inbox = {
            sender: keys.decrypt_shares(
                self.c.private,
                self.keys[sender][0],
                self.round,
                sender,
                self.cid,
                messages.decode(text, keys.CIPHERTEXT_BYTES, "share"),
            )
            for sender, text in inbox["shares"].items()
        }

    def masked_vector(self) -> np.ndarray:
        assert self.change is not None
        vector, _ = Quantiser(self.params).encode(self.change, self.weight)
        masks.apply_mask(vector, self.b, 1)
        for peer in self.inbox:
            seed = keys.pair_seed(self.s.private, self.keys[peer][1], self.round)
            masks.apply_mask(vector, seed, 1 if self.cid < peer else -1)
        return vector

    def reveal_body(self, unmask: dict[str, Any]) -> dict[str, Any]:
        survivors, dropped = set(unmask["survivors"]), set(unmask["dropped"])
        assert self.cid in survivors
        return {
            "round": self.round,
            "self_mask_shares": {
                j: messages.encode(pair[0]) for j, pair in self.inbox.items() if j in survivors
            },
            "mask_key_shares": {
                j: messages.encode(pair[1]) for j, pair in self.inbox.items() if j in dropped
            },
        }

    def keys_stage(self) -> None:
        self.take_roster(self.answer(self.post_keys(), "/v1/secagg/roster"))

    def shares_stage(self) -> None:
        self.take_inbox(self.answer(self.post_shares(self.ciphertexts()), "/v1/secagg/inbox"))

    def masked_stage(self) -> None:
        response = self.post_masked(self.round, masked(self.masked_vector()))
        self.unmask = self.answer(response, "/v1/secagg/unmask")

    def reveal_stage(self) -> None:
        response = self.post("/v1/secagg/reveal", self.reveal_body(self.unmask))
        assert response.status_code == 200, response.text
        assert response.json() == {"accepted": True}

    def run(self, stop_after: str | None = None, leave: bool = True, server_round: int = 1) -> None:
        """The whole round, stopping after ``stop_after`` (leaving the run, or silent)."""
        self.fetch(server_round)
        for stage in STAGES:
            getattr(self, f"{stage}_stage")()
            if stage == stop_after:
                if leave:
                    (self.drop or self.raw.leave)()
                return


def masked(vector: np.ndarray) -> bytes:
    return wire.encode({SECAGG_MASKED_TENSOR: vector})


def join_all(server: Server, n: int, seed: int = 0) -> list[Scripted]:
    """n joined clients (c0, c1...) with random changes and weights."""
    rng = np.random.default_rng(seed)
    size = sum(v.size for v in W0.values())
    clients = []
    for i in range(n):
        client = server.client(f"c{i}")
        assert client.raw.join().status_code == 200
        client.change = rng.uniform(-0.5, 0.5, size)
        client.weight = int(rng.integers(1, 50))
        clients.append(client)
    return clients


def run_all(
    clients: list[Scripted],
    stops: dict[str, str] | None = None,
    leave: bool = True,
    server_round: int = 1,
) -> None:
    """Every client's round on its own thread (each POST holds until the next stage)."""
    errors: list[BaseException] = []

    def one(client: Scripted) -> None:
        try:
            client.run((stops or {}).get(client.cid), leave, server_round)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
    assert not errors, errors


def expected_model(
    clients: list[Scripted], base: dict[str, np.ndarray] = W0
) -> dict[str, np.ndarray]:
    """The exact weighted mean of the clients' changes, applied to ``base``."""
    total = sum(c.weight for c in clients)
    assert all(c.change is not None for c in clients)
    mean = sum(c.weight * c.change for c in clients) / total  # type: ignore[operator]
    return Layout.of(base).apply(base, mean)


def final_model(server: Server, client: Scripted, after: int = 1) -> dict[str, np.ndarray]:
    response = client.raw.model(after + 1, wait=WAIT)
    assert response.status_code == 200, response.text
    assert response.headers["X-FL-Phase"] == "finished"
    return wire.decode(response.content)


def assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], bound: float) -> None:
    assert set(got) == set(want)
    for name in want:
        # float32 storage of the result adds its own rounding to the quantisation's.
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=bound + 1e-6)


def model_sized_arrays(secure: SecureRound) -> list[np.ndarray]:
    """Every array of the layout's size or more that the SecureRound holds, however deep."""
    found: list[np.ndarray] = []
    seen: set[int] = set()

    def walk(value: Any) -> None:
        # The run's pool of sums (one kept for the next round's use) is not the round's.
        if id(value) in seen or isinstance(value, Recycler):
            return
        seen.add(id(value))
        if isinstance(value, np.ndarray):
            if value.size >= secure.layout.size:
                found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple, set)):
            for item in value:
                walk(item)
        elif hasattr(value, "__dict__"):
            for item in vars(value).values():
                walk(item)

    walk(secure)
    return found


def test_rounds_give_the_weighted_mean_and_store_no_unmasking_material(serve: Any) -> None:
    server = serve(4, num_rounds=2)
    clients = join_all(server, 4)
    clients[0].fetch()
    assert clients[0].config["secagg"]["weighting"] == "examples"
    first = server.secure_round()
    assert server.federation.status()["secagg_stage"] == "keys"
    run_all(clients)
    bound = Quantiser(first.params).error_bound
    # Round 2 starts from round 1's model, as every client decoded it.
    clients[0].fetch(2)
    after_one = clients[0].base
    assert_close(after_one, expected_model(clients), bound)
    secure = server.secure_round()
    assert secure is not first and secure.number == 2
    rng = np.random.default_rng(9)
    for client in clients:
        client.change, client.weight = rng.uniform(-1, 1, secure.layout.size - 1), 1 + client.weight
    run_all(clients, server_round=2)
    assert_close(
        final_model(server, clients[0], after=2), expected_model(clients, after_one), bound
    )

    # The one model-sized array is the running sum, whatever the number of clients.
    assert [a is secure.sum.vector for a in model_sized_arrays(secure)] == [True]
    # Every client survived: the server holds shares of self masks only, never of a key.
    for holder, (self_mask, mask_key) in secure.reveals.items():
        assert mask_key == {} and set(self_mask) <= set(secure.neighbours[holder]), holder
    record = server.federation.history()["rounds"][2]
    report = record["secure_aggregation"]
    assert report["roster"] == report["survivors"] == report["revealed"] == 4
    assert report["dropped_at_shares"] == report["dropped_at_masked"] == []
    assert report["total_weight"] == record["num_examples"] == sum(c.weight for c in clients)
    assert report["error_bound"] == bound and report["weighting"] == "examples"
    assert record["contributors"] == sorted(c.cid for c in clients)
    server.wait_end()
    assert server.federation.phase is Phase.FINISHED
    # Once unmasked, the round's stages and sum are let go.
    assert server.federation._rounds[-1].secure is None


@pytest.mark.parametrize(
    ("stop_after", "revoked"),
    [("keys", False), ("shares", False), ("shares", True), ("masked", False)],
)
def test_a_drop_out_at_each_stage_is_recovered(serve: Any, stop_after: str, revoked: bool) -> None:
    """One of five clients drops after ``stop_after`` (5 clients: k = 4, t = 3, one
    drop-out tolerated), by leaving or by its credential's revocation: the round is the
    mean of those whose masked input counted."""
    server = serve(5, min_clients=3)
    clients = join_all(server, 5, seed=1)
    if revoked:
        clients[4].drop = lambda: server.federation.revoke("c4")
    secure = server.secure_round()
    run_all(clients, {"c4": stop_after})
    counted = clients if stop_after == "masked" else clients[:4]
    assert_close(final_model(server, clients[0]), expected_model(counted), 3e-5)
    report = server.federation.history()["rounds"][1]["secure_aggregation"]
    dropped = {
        "keys": "dropped_at_shares",
        "shares": "dropped_at_masked",
        "masked": "dropped_at_reveal",
    }[stop_after]
    assert report[dropped] == ["c4"], report
    assert report["survivors"] == len(counted)
    # The dropped client's masking key was rebuilt only when its pair masks were in the
    # sum; no survivor's secrets were ever revealed both ways.
    for holder, (self_mask, mask_key) in secure.reveals.items():
        assert set(self_mask) <= set(secure.u3) and set(mask_key) <= {"c4"}, holder
        assert not set(self_mask) & set(mask_key)
    if stop_after == "shares":
        assert any(mask_key for _, mask_key in secure.reveals.values())
    server.wait_end()


def test_more_drop_outs_than_the_threshold_fail_the_run_with_a_reason(serve: Any) -> None:
    """Two of five stop silently after their shares (the stage's timeout closes it): each
    survivor's self mask then has two shares of the three needed, and the run fails
    instead of producing a model."""
    server = serve(5, SecAggParams(timeout=1.0), min_clients=3)
    clients = join_all(server, 5, seed=2)
    run_all(clients, {"c3": "shares", "c4": "shares"}, leave=False)
    server.wait_end()
    assert server.federation.phase is Phase.FAILED
    error = server.federation.error or ""
    assert "round 1" in error and "too many drop-outs" in error
    assert "needs 3 shares (the threshold)" in error
    response = clients[0].raw.model(2, wait=WAIT)
    assert response.status_code == 409 and response.json()["error"] == "run_failed"


def expect(response: requests.Response, status: int, code: str, text: str = "") -> None:
    """A refusal: this status, this error code, a message saying ``text``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and text in body["message"], body


def head_only(server: Server, headers: dict[str, str]) -> bytes:
    """The answer to a masked POST's head, sent without one byte of its 60 kB body."""
    host, port = server.url.removeprefix("http://").split(":")
    lines = [
        "POST /v1/secagg/masked HTTP/1.1",
        f"Host: {host}",
        "X-FL-Round: 1",
        "Content-Length: 60000",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return sock.recv(1 << 16)


def test_stages_refuse_what_the_doc_refuses(serve: Any) -> None:
    """Three clients, one request at a time: every stage's refusals, then the round."""
    server = serve(3)
    a, b, c = clients = join_all(server, 3, seed=3)
    for client in clients:
        client.fetch()
    secure = server.secure_round()
    size = secure.layout.size
    # Out of order: shares and masked inputs in the key stage; the masked input's head is
    # refused before its body (a stranger's 401, a client's 409), as is a plain update.
    expect(a.post_shares({}, wait=0), 409, "wrong_round", "keys stage")
    assert head_only(server, {"X-FL-Client-Id": "a"}).startswith(b"HTTP/1.1 401")
    auth = {"X-FL-Client-Id": "c0", "Authorization": f"Bearer {server.token}"}
    assert head_only(server, auth).startswith(b"HTTP/1.1 409")
    expect(a.raw.update(1, wire.encode(W0)), 400, "bad_request", "secure aggregation")

    assert a.post_keys(wait=0).status_code == 202
    assert b.post_keys(wait=0).status_code == 202
    other = {
        "round": 1,
        "encryption_key": messages.encode(keys.generate().public),
        "masking_key": messages.encode(keys.generate().public),
    }
    expect(a.post("/v1/secagg/keys", other, wait=0), 409, "conflict", "other keys")
    copied = {**other, "encryption_key": messages.encode(a.c.public)}
    expect(c.post("/v1/secagg/keys", copied, wait=0), 400, "bad_request", "fresh")
    c.take_roster(c.answer(c.post_keys(), "/v1/secagg/roster"))
    for client in (a, b):
        client.take_roster(client.get("/v1/secagg/roster").json())
    expect(a.post("/v1/secagg/keys", other, wait=0), 409, "wrong_round", "key stage")

    shares = a.ciphertexts()
    stray = {**shares, "c9": next(iter(shares.values()))}
    expect(a.post_shares(stray, wait=0), 400, "bad_request", "exactly the neighbours")
    short = {j: messages.encode(b"x" * 10) for j in shares}
    expect(a.post_shares(short, wait=0), 400, "bad_request")
    assert a.post_shares(shares, wait=0).status_code == 202
    forged = {j: messages.encode(bytes(keys.CIPHERTEXT_BYTES)) for j in shares}
    expect(a.post_shares(forged, wait=0), 409, "conflict", "other shares")
    assert b.post_shares(b.ciphertexts(), wait=0).status_code == 202
    c.take_inbox(c.answer(c.post_shares(c.ciphertexts()), "/v1/secagg/inbox"))
    for client in (a, b):
        client.take_inbox(client.get("/v1/secagg/inbox").json())

    dtype = Quantiser(secure.params).dtype
    for wrong in (
        masked(np.zeros(size, np.float32)),
        masked(np.zeros(size - 1, dtype)),
        wire.encode({"update": np.zeros(size, dtype)}),
    ):
        expect(a.post_masked(1, wrong, wait=0), 422, "invalid_update")
    first = masked(a.masked_vector())
    assert a.post_masked(1, first, wait=0).json()["duplicate"] is False
    assert a.post_masked(1, first, wait=0).json()["duplicate"] is True
    expect(a.post_masked(1, masked(np.zeros(size, dtype)), wait=0), 409, "conflict")
    assert b.post_masked(1, masked(b.masked_vector()), wait=0).status_code == 202
    c.unmask = c.answer(c.post_masked(1, masked(c.masked_vector())), "/v1/secagg/unmask")
    assert (c.unmask["survivors"], c.unmask["dropped"]) == (["c0", "c1", "c2"], [])

    body = a.reveal_body(a.get("/v1/secagg/unmask").json())
    peer, share = next(iter(body["self_mask_shares"].items()))
    for bad, text in (
        ({**body, "mask_key_shares": {peer: share}}, "both"),
        ({**body, "self_mask_shares": {}, "mask_key_shares": {peer: share}}, "dropped"),
        ({**body, "self_mask_shares": {"c9": share}}, "survived"),
    ):
        expect(a.post("/v1/secagg/reveal", bad), 400, "bad_request", text)
    a.unmask = b.unmask = c.unmask
    for client in clients:
        client.reveal_stage()
    assert_close(final_model(server, a), expected_model(clients), 3e-5)
    metrics = requests.get(f"{server.url}/metrics", timeout=WAIT).text
    for reason in ("secagg_wrong_round", "secagg_conflict", "secagg_bad_request"):
        assert f'fl_requests_rejected_total{{reason="{reason}"}}' in metrics, reason
    assert 'fl_requests_rejected_total{reason="secagg_invalid_update"} 3' in metrics


def test_federated_clients_train_two_secure_rounds_over_half_precision_wire(
    serve: Any, tmp_path: Path
) -> None:
    """The client library's own rounds (FederatedClient, client/secure_aggregation.py)
    against this server, float16 on the wire: each round is the example-weighted mean
    of the deltas, added to the model as the clients decoded it. The rounds' records
    survive a checkpoint."""
    server = serve(4, num_rounds=2, wire_dtype="float16", checkpoint_dir=tmp_path)
    deltas, counts = (0.1, -0.2, 0.3, 0.05), (3, 1, 7, 2)
    clients = [
        FederatedClient(
            server.url,
            f"c{i}",
            DeltaTrainer(delta=delta, num_examples=count),
            headers={"Authorization": f"Bearer {server.token}"},
            poll_wait=WAIT,
            check_model=False,
        )
        for i, (delta, count) in enumerate(zip(deltas, counts, strict=True))
    ]
    summaries: list[Any] = []
    threads = [threading.Thread(target=lambda c=c: summaries.append(c.run())) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
    server.wait_end()
    assert server.federation.phase is Phase.FINISHED, server.federation.error
    assert sorted(s.rounds_trained for s in summaries) == [[1, 2]] * 4
    # Round 2's masked vectors and running sum are round 1's memory, used again.
    assert [c._secure_vectors.reused for c in clients] == [1] * 4
    assert server.federation._secure_sums.reused == 1
    mean = float(np.dot(deltas, counts) / sum(counts))
    model = dict(W0)
    for _ in range(2):
        decoded = wire.decode(wire.encode(model, wire_dtype="float16"), wire_dtype="float16")
        model = {name: value + np.float32(mean) for name, value in decoded.items()}
    bound = Quantiser(SecAggParams()).error_bound
    assert_close(server.federation.final_weights() or {}, model, bound)
    record = server.federation.history()["rounds"][2]
    assert record["num_examples"] == sum(counts)
    assert record["train"]["secagg_clipped"] == 0
    saved = checkpoint.load(tmp_path)
    assert saved is not None
    restored = checkpoint_state.restored_run(saved).rounds[-1]
    assert restored.secure_report == record["secure_aggregation"]
    assert restored.contributors == dict.fromkeys(record["contributors"])


def test_self_masks_come_out_during_the_reveals_and_a_late_wrong_share_still_fails(
    serve: Any,
) -> None:
    """Five clients (k = 4, t = 3), revealing one at a time: each self mask is out of the
    sum once three of its shares are in, before the reveal stage closes; a fourth share
    that does not lie on the same polynomial, revealed after, fails the round."""
    server = serve(5)
    clients = join_all(server, 5, seed=3)
    secure = server.secure_round()
    run_all(clients, {c.cid: "masked" for c in clients}, leave=False)
    for client in clients[:4]:
        client.reveal_stage()
    assert set(secure.unmasked) == {c.cid for c in clients} and not secure.closed
    last = clients[4]
    body = last.reveal_body(last.unmask)
    share = messages.decode(body["self_mask_shares"]["c0"], shamir.SHARE_BYTES, "share")
    wrong = (int.from_bytes(share, "big") + 1) % shamir.PRIME
    body["self_mask_shares"]["c0"] = messages.encode(wrong.to_bytes(shamir.SHARE_BYTES, "big"))
    assert last.post("/v1/secagg/reveal", body).status_code == 200
    server.wait_end()
    assert server.federation.phase is Phase.FAILED
    assert "c0" in (server.federation.error or "")
    assert "do not agree" in (server.federation.error or "")


@pytest.mark.parametrize("stripes", [1, 3, 4])
def test_the_sums_striped_mask_removal_equals_one_pass_over_the_whole(stripes: int) -> None:
    """``ModularSum.apply_masks`` (stripes under their locks, half of them on a second
    thread, each from its offset in the streams) gives what one pass over the whole
    vector gives."""
    size = (stripes - 1) * STRIPE + 1001
    streams = [(secrets.token_bytes(32), -1), (secrets.token_bytes(32), 1)]
    total = ModularSum(size, np.dtype(np.uint32))
    start = np.random.default_rng(5).integers(0, 2**32, size, dtype=np.uint32)
    total.add(start)
    total.apply_masks(streams)
    masks.apply_masks(start, streams)
    assert np.array_equal(total.vector, start)


def test_a_sum_from_recycled_memory_starts_at_zero_and_reuses_a_dropped_one() -> None:
    """A round's sum from the run's Recycler: the memory of a sum no one holds any more
    (no fresh pages to fault in on the first fold), zeroed, so it sums like a new one."""
    arrays = Recycler(per_kind=1)
    first = ModularSum(1000, np.dtype(np.uint32), arrays)
    first.add(np.full(1000, 7, np.uint32))
    memory = first.vector.ctypes.data  # not a reference: that would keep it in use
    del first
    second = ModularSum(1000, np.dtype(np.uint32), arrays)
    assert second.vector.ctypes.data == memory and arrays.reused == 1
    values = np.random.default_rng(2).integers(0, 2**32, 1000, dtype=np.uint32)
    second.add(values)
    assert np.array_equal(second.vector, values)
    # Still held: the next sum gets new memory.
    third = ModularSum(1000, np.dtype(np.uint32), arrays)
    assert third.vector.ctypes.data != memory and not third.vector.any()


def test_announced_keys_are_checked_and_make_the_next_rounds_keys(serve: Any) -> None:
    """A reveal's ``next_keys``: refused (and the reveal with it) when malformed, when its
    two keys are one, or when they differ from keys announced already; round 2 then
    holds the announced keys of the clients that sent them, tells them so in their round
    config, and waits for the keys of the one that did not."""
    server = serve(3, num_rounds=2)
    clients = join_all(server, 3, seed=4)
    first = server.secure_round()
    run_all(clients, {c.cid: "masked" for c in clients}, leave=False)
    c0, c1, c2 = clients
    announced = {c.cid: (keys.generate(), keys.generate()) for c in (c0, c1)}

    def next_keys(cid: str) -> dict[str, str]:
        enc, mask = announced[cid]
        return {
            "encryption_key": messages.encode(enc.public),
            "masking_key": messages.encode(mask.public),
        }

    body = c0.reveal_body(c0.unmask)
    one_key = next_keys("c0")["encryption_key"]
    for bad in (
        "not an object",
        {"encryption_key": one_key},
        {"encryption_key": "AAAA", "masking_key": one_key},
        {"encryption_key": one_key, "masking_key": one_key},
    ):
        expect(c0.post("/v1/secagg/reveal", {**body, "next_keys": bad}), 400, "bad_request")
    assert "c0" not in first.reveals
    assert c0.post("/v1/secagg/reveal", {**body, "next_keys": next_keys("c0")}).status_code == 200
    other = {
        "encryption_key": next_keys("c1")["encryption_key"],
        "masking_key": next_keys("c0")["masking_key"],
    }
    expect(c0.post("/v1/secagg/reveal", {**body, "next_keys": other}), 409, "conflict")
    assert (
        c1.post(
            "/v1/secagg/reveal", {**c1.reveal_body(c1.unmask), "next_keys": next_keys("c1")}
        ).status_code
        == 200
    )
    c2.reveal_stage()
    for client in clients:
        client.fetch(2)
    second = server.secure_round()
    assert second.number == 2 and second.announced == {"c0", "c1"}
    assert second.keys["c0"] == (announced["c0"][0].public, announced["c0"][1].public)
    assert [c.config.get("secagg_keys_announced") for c in clients] == [True, True, None]
    # The key stage waits for c2's keys: no roster in the round configs.
    assert second.stage.value == "keys" and "secagg_roster" not in c0.config
    c2.keys_stage()
    roster = c0.answer(c0.get("/v1/secagg/roster"), "/v1/secagg/roster")
    assert sorted(e["client_id"] for e in roster["roster"]) == ["c0", "c1", "c2"]
    assert second.report()["keys_announced"] == 2


def test_shares_ahead_are_checked_and_open_the_next_round_at_its_masked_stage(
    serve: Any,
) -> None:
    """Keys announced in the masked inputs' ``X-FL-Next-Keys`` make round 2's roster,
    which comes with each unmask request; a reveal's ``next_shares`` is refused (and the
    reveal with it) unless it holds exactly the client's round-2 neighbours, each a
    ciphertext of the right size; round 2 then opens past its key and share stages, each
    client's inbox in its round config, and its masked inputs make the weighted mean."""
    server = serve(3, num_rounds=2)
    clients = join_all(server, 3, seed=5)
    first = server.secure_round()
    run_all(clients, {c.cid: "shares" for c in clients}, leave=False)
    announced = {c.cid: (keys.generate(), keys.generate()) for c in clients}

    def masked_announcing(client: Scripted) -> None:
        enc, mask = announced[client.cid]
        next_keys = {
            "encryption_key": messages.encode(enc.public),
            "masking_key": messages.encode(mask.public),
        }
        extra = {"X-FL-Next-Keys": json.dumps(next_keys)}
        response = client.post_masked(1, masked(client.masked_vector()), extra=extra)
        client.unmask = client.answer(response, "/v1/secagg/unmask")

    # A malformed header is refused before the masked input counts.
    response = clients[0].post_masked(
        1, masked(clients[0].masked_vector()), extra={"X-FL-Next-Keys": "{not json"}
    )
    expect(response, 400, "bad_request")
    assert "c0" not in first.masked
    threads = [threading.Thread(target=masked_announcing, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    rosters = [c.unmask["next_roster"] for c in clients]
    assert all(r == rosters[0] for r in rosters) and rosters[0]["round"] == 2
    assert [e["client_id"] for e in rosters[0]["roster"]] == ["c0", "c1", "c2"]
    reveals, next_shares = {}, {}
    for client in clients:
        reveals[client.cid] = client.reveal_body(client.unmask)
        # From here on the client is its round-2 self: that round's keys and roster.
        client.round, (client.c, client.s) = 2, announced[client.cid]
        client.take_roster(client.unmask["next_roster"])
        next_shares[client.cid] = client.ciphertexts()
    c0 = clients[0]
    shares = next_shares["c0"]
    one = next(iter(shares))
    for wrong in (
        {one: shares[one]},  # not every neighbour
        {**shares, "c9": shares[one]},  # a stranger
        {**shares, one: messages.encode(b"short")},  # a ciphertext of the wrong size
        "not a map",
    ):
        response = c0.post("/v1/secagg/reveal", {**reveals["c0"], "next_shares": wrong})
        expect(response, 400, "bad_request")
        assert "c0" not in first.reveals
    for client in clients:
        body = {**reveals[client.cid], "next_shares": next_shares[client.cid]}
        response = client.post("/v1/secagg/reveal", body)
        assert response.status_code == 200, response.text
    after_one = None
    for client in clients:
        client.fetch(2)
        assert client.config["secagg_keys_announced"] is True
        client.take_inbox(client.config["secagg_inbox"])
        assert sorted(client.inbox) == sorted(client.neighbours)
        after_one = client.base
    second = server.secure_round()
    assert second.number == 2 and second.ahead and second.stage.value == "masked"
    assert second.u2 == ["c0", "c1", "c2"]
    assert after_one is not None
    bound = Quantiser(first.params).error_bound
    assert_close(after_one, expected_model(clients), bound)
    rng = np.random.default_rng(6)
    for client in clients:
        client.change = rng.uniform(-1, 1, second.layout.size - 1)
    threads = [threading.Thread(target=c.masked_stage) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    for client in clients:
        assert "next_roster" not in client.unmask  # no round 3
        client.reveal_stage()
    assert_close(
        final_model(server, clients[0], after=2), expected_model(clients, after_one), bound
    )
    report = server.federation.history()["rounds"][2]["secure_aggregation"]
    assert report["shares_ahead"] is True and report["survivors"] == 3
    assert report["keys_announced"] == 3


def test_next_shares_without_a_round_made_ahead_are_refused(serve: Any) -> None:
    """A reveal's ``next_shares`` when no masked input announced keys: 409, and the
    reveal does not count."""
    server = serve(3, num_rounds=2)
    clients = join_all(server, 3, seed=7)
    first = server.secure_round()
    run_all(clients, {c.cid: "masked" for c in clients}, leave=False)
    assert "next_roster" not in clients[0].unmask
    body = {**clients[0].reveal_body(clients[0].unmask), "next_shares": {}}
    expect(clients[0].post("/v1/secagg/reveal", body), 409, "wrong_round")
    assert "c0" not in first.reveals


def test_the_largest_roster_made_ahead_and_its_inboxes_fit_one_header_line() -> None:
    """At the most clients a round's roster travels with the model (ids of the longest
    kind), the round config of a round whose shares went ahead, roster and inbox, is
    one ``X-FL-Config`` line within what the client's HTTP parser reads (http.client's
    line limit)."""
    n = ROSTER_IN_ANSWER_CLIENTS
    ids = [f"{i:03d}" + "x" * 60 for i in range(n)]  # 63 characters: the longest id
    layout = Layout.of(W0)
    previous = SecureRound(1, SecAggParams(), "examples", layout, opened=0.0, round_timeout=60)
    previous.u3 = ids
    announced = {c: (keys.generate().public, keys.generate().public) for c in ids}
    ahead = SecureRound.ahead_of(previous, announced, now=0.0)
    assert ahead is not None and ahead.graph is not None and ahead.graph.k > n // 3
    for client_id in ids:
        shares = {
            j: secrets.token_bytes(keys.CIPHERTEXT_BYTES) for j in ahead.neighbours[client_id]
        }
        ahead.add_shares(client_id, shares)
    assert ahead.open_ahead(0.0, ids, quorum=3)
    longest = 0
    for client_id in ids:
        config = {
            "secagg_keys_announced": True,
            "secagg_roster": ahead.roster_answer(client_id, ids),
            "secagg_inbox": ahead.inbox_answer(client_id),
        }
        longest = max(longest, len(f"X-FL-Config: {json.dumps(config)}\r\n"))
    assert longest < http.client._MAXLINE, longest
