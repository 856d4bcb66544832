"""The client side of secure aggregation against a scripted server that may lie.

A small real HTTP server (stdlib, loopback, free port) plays docs/secure_aggregation.md
for one round: it relays a roster of the real FederatedClient and four scripted
peers (``ClientRound``s driven here), routes the peers' encrypted shares to the
client, takes its masked input and then asks for its reveal. Honest, it ends the
run; malicious, it names a peer both survived and dropped (or the client dropped,
or too few survivors), asks twice with a peer's kind flipped, tampers with or
withholds shares, or sends a roster with a wrong graph or without the client's
keys. The client must refuse with SecAggViolation (the CLI: exit 1 with the
reason), and no reveal it sent may ever hold both shares of one peer.
"""

from __future__ import annotations

import http.server
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from fl_kubeflow import protocol, wire
from fl_kubeflow.client.federated_client import FederatedClient
from fl_kubeflow.client.numpy_trainers import DeltaTrainer
from fl_kubeflow.client.secure_aggregation import (
    MASK_KEY,
    SELF_MASK,
    ClientRound,
    SecAggViolation,
)
from fl_kubeflow.secagg import keys, masks, messages, shamir
from fl_kubeflow.secagg.params import SecAggParams, choose_graph
from fl_kubeflow.secagg.quantise import Quantiser
from fl_kubeflow.secagg.vector import Layout
from tests.fl_processes import run_cli
from tests.http_files import serving

CLIENT = "2"  # in the middle of the roster: pair masks of both signs
PEERS = ("0", "1", "3", "4")
DELTA = 0.25
EXAMPLES = 7
TIMEOUT = 30.0

# The server's answer to the keys POST, the unmask request(s), ...: each a function of
# the scripted round, so a test swaps one to play a malicious server.
Script = Callable[["ScriptedRound"], dict[str, Any]]


class ScriptedRound:
    """One secure round as the scripted server sees it: the peers' states, what came in."""

    def __init__(self, base: wire.Weights) -> None:
        self.params = SecAggParams()
        self.base = base
        self.peers = {
            peer: ClientRound(peer, 1, self.params, protocol.SECAGG_BY_EXAMPLES) for peer in PEERS
        }
        self.client_keys: dict[str, Any] = {}
        self.client_shares: dict[str, str] = {}
        self.masked: np.ndarray | None = None
        self.reveals: list[dict[str, Any]] = []
        self.unmask_requests = 0
        # Keys the client announced with its masked input, and round 2's scripted peers.
        self.next_keys: dict[str, str] | None = None
        self.next_peers: dict[str, ClientRound] = {}
        self.next_roster: dict[str, Any] | None = None

    def roster(self) -> list[dict[str, str]]:
        entries = [self.client_keys] + [peer.keys_message() for peer in self.peers.values()]
        fields = ("client_id", "encryption_key", "masking_key")
        return sorted(({f: e[f] for f in fields} for e in entries), key=lambda e: e["client_id"])

    def roster_answer(self) -> dict[str, Any]:
        graph = choose_graph(
            len(PEERS) + 1, self.params.dropout_fraction, self.params.corrupt_fraction
        )
        return {
            "round": 1,
            "stage": "shares",
            "roster": self.roster(),
            "neighbours": graph.k,
            "threshold": graph.t,
        }

    def inbox_answer(self) -> dict[str, Any]:
        answer = self.roster_answer()
        for peer in self.peers.values():
            peer.accept_roster(answer)
        inbox = {
            name: peer.shares_message()["shares"][CLIENT]
            for name, peer in self.peers.items()
            if CLIENT in peer.neighbours
        }
        return {"round": 1, "stage": "masked", "shares": inbox}

    def unmask_answer(self, dropped: tuple[str, ...] = ()) -> dict[str, Any]:
        self.unmask_requests += 1
        survivors = sorted({CLIENT, *PEERS} - set(dropped))
        return {"round": 1, "stage": "reveal", "survivors": survivors, "dropped": sorted(dropped)}


def honest_unmask(state: ScriptedRound) -> dict[str, Any]:
    return state.unmask_answer()


class ScriptedServer(http.server.ThreadingHTTPServer):
    """Protocol v1 for one client and one secure round, then "finished"."""

    def __init__(
        self,
        roster: Script = ScriptedRound.roster_answer,
        inbox: Script = ScriptedRound.inbox_answer,
        unmask: Script = honest_unmask,
        reveal: Script = lambda state: {"accepted": True},
        examples: int = EXAMPLES,
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = ""
        self.trainer = DeltaTrainer(delta=DELTA, num_examples=examples)
        self.state = ScriptedRound(self.trainer.initial_weights())
        self.script = {"roster": roster, "inbox": inbox, "unmask": unmask, "reveal": reveal}
        self.config = {
            protocol.SECAGG_CONFIG_KEY: {
                **self.state.params.to_config(),
                protocol.SECAGG_WEIGHTING_KEY: protocol.SECAGG_BY_EXAMPLES,
            }
        }

    def handle_error(self, request: Any, client_address: Any) -> None:  # client gave up: fine
        pass


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ScriptedServer

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, payload: dict[str, Any], status: int = 200) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path != protocol.MODEL_PATH:
            return self._json(protocol.error_body(protocol.BAD_REQUEST, url.path), 404)
        server_round = int(parse_qs(url.query)[protocol.ROUND_PARAM][0])
        phase = protocol.Phase.FIT if server_round == 1 else protocol.Phase.FINISHED
        headers = {
            protocol.ROUND_HEADER: str(server_round),
            protocol.PHASE_HEADER: phase.value,
            protocol.CONFIG_HEADER: json.dumps(self.server.config if server_round == 1 else {}),
            protocol.WIRE_DTYPE_HEADER: "float32",
            "Content-Type": wire.CONTENT_TYPE,
        }
        self._send(200, bytes(wire.encode(self.server.state.base)), headers)

    def do_POST(self) -> None:
        path = urlparse(self.path).path
        body = self.rfile.read(int(self.headers["Content-Length"]))
        state, script = self.server.state, self.server.script
        if path == protocol.SECAGG_MASKED_PATH:
            state.masked = wire.decode(body)[protocol.SECAGG_MASKED_TENSOR]
            state.next_keys = json.loads(self.headers.get(protocol.SECAGG_NEXT_KEYS_HEADER, "null"))
            return self._json(script["unmask"](state))
        payload = json.loads(body)
        if path == protocol.JOIN_PATH:
            return self._json({"client_id": CLIENT, "num_rounds": 1, "propose_initial": False})
        if path == protocol.SECAGG_KEYS_PATH:
            state.client_keys = payload
            return self._json(script["roster"](state))
        if path == protocol.SECAGG_SHARES_PATH:
            state.client_shares = payload["shares"]
            return self._json(script["inbox"](state))
        if path == protocol.SECAGG_REVEAL_PATH:
            state.reveals.append(payload)
            return self._json(script["reveal"](state))
        if path in (protocol.EVALUATE_PATH, protocol.LEAVE_PATH):
            return self._json({})
        return self._json(protocol.error_body(protocol.BAD_REQUEST, path), 404)


@contextmanager
def scripted_server(**script: Any) -> Iterator[ScriptedServer]:
    server = ScriptedServer(**script)
    with serving(server, TIMEOUT) as server.url:
        yield server


def run_client(server: ScriptedServer) -> Any:
    client = FederatedClient(
        server.url,
        CLIENT,
        server.trainer,
        retry_timeout=5.0,
        round_wait_timeout=TIMEOUT,
        poll_wait=1.0,
        request_timeout=TIMEOUT,
    )
    return client.run()


def refused(match: str, **script: Any) -> ScriptedRound:
    """The scripted round after the client refused it with a SecAggViolation matching ``match``."""
    with scripted_server(**script) as server, pytest.raises(SecAggViolation, match=match):
        run_client(server)
    return server.state


def assert_never_both_shares(reveals: list[dict[str, Any]]) -> None:
    """No peer's two kinds of share in one reveal, nor across the round's reveals."""
    kinds: dict[str, set[str]] = {}
    for reveal in reveals:
        for kind in (SELF_MASK, MASK_KEY):
            for peer in reveal[kind]:
                kinds.setdefault(peer, set()).add(kind)
    assert all(len(seen) == 1 for seen in kinds.values()), kinds


def unmasked_input(state: ScriptedRound) -> np.ndarray:
    """The client's masked input with its masks removed, as the peers' shares allow:
    its b rebuilt from the peers' shares of it, the pair masks from the peers' keys."""
    shares: dict[int, bytes] = {}
    positions = {entry["client_id"]: i + 1 for i, entry in enumerate(state.roster())}
    answer = state.roster_answer()
    public = {e["client_id"]: e for e in answer["roster"]}
    vector = state.masked.copy()
    for name, peer in state.peers.items():
        if name not in state.client_shares:
            continue
        self_mask_share, _ = keys.decrypt_shares(
            peer._encryption.private,
            messages.decode(public[CLIENT]["encryption_key"], keys.KEY_BYTES, "key"),
            1,
            CLIENT,
            name,
            messages.decode(state.client_shares[name], keys.CIPHERTEXT_BYTES, "share"),
        )
        shares[positions[name]] = self_mask_share
        client_masking = messages.decode(public[CLIENT]["masking_key"], keys.KEY_BYTES, "key")
        seed = keys.pair_seed(peer._masking.private, client_masking, 1)
        masks.apply_mask(vector, seed, -1 if name > CLIENT else +1)
    masks.apply_mask(vector, shamir.combine(shares, answer["threshold"]), -1)
    return vector


def test_honest_round_reveals_one_share_per_peer_and_masks_correctly() -> None:
    with scripted_server() as server:
        summary = run_client(server)
    state = server.state
    assert summary.rounds_trained == [1]
    assert summary.fit_metrics[1]["secagg_clipped"] == 0.0
    (reveal,) = state.reveals
    assert sorted(reveal[SELF_MASK]) == sorted(state.client_shares) and reveal[MASK_KEY] == {}
    # Masked, the input looks like nothing; with the masks removed it is the weighted change.
    expected, _ = Quantiser(state.params).encode(
        Layout.of(state.base).change(server.trainer.fit(state.base, 1, {}).weights, state.base),
        EXAMPLES,
    )
    assert not np.array_equal(state.masked, expected)
    np.testing.assert_array_equal(unmasked_input(state), expected)


def both_lists(state: ScriptedRound) -> dict[str, Any]:
    request = state.unmask_answer()
    request["dropped"] = ["3"]  # still among the survivors too
    return request


@pytest.mark.parametrize(
    ("unmask", "reason"),
    [
        (both_lists, "both survived and dropped"),
        (lambda state: state.unmask_answer(dropped=(CLIENT,)), "not list this client"),
    ],
    ids=["both-lists", "self-dropped"],
)
def test_refuses_an_unmask_request_it_cannot_trust(unmask: Script, reason: str) -> None:
    assert refused(reason, unmask=unmask).reveals == []


def test_answers_the_same_request_again_with_the_same_shares() -> None:
    def again_once(state: ScriptedRound) -> dict[str, Any]:
        return state.unmask_answer() if state.unmask_requests < 2 else {"accepted": True}

    with scripted_server(reveal=again_once) as server:
        assert run_client(server).rounds_trained == [1]
    first, second = server.state.reveals
    assert first == second


def test_refuses_a_second_request_that_flips_a_peer() -> None:
    # The first request says everyone survived (the client sends peer 3's b share); the
    # answer to its reveal is a second one saying peer 3 dropped (asking for its key).
    state = refused("other share", reveal=lambda state: state.unmask_answer(dropped=("3",)))
    assert state.unmask_requests == 2 and len(state.reveals) == 1
    assert "3" in state.reveals[0][SELF_MASK]
    assert_never_both_shares(state.reveals)


def test_refuses_a_roster_with_another_graph() -> None:
    def wrong_threshold(state: ScriptedRound) -> dict[str, Any]:
        return {**state.roster_answer(), "threshold": state.roster_answer()["threshold"] - 1}

    assert refused("they are k=", roster=wrong_threshold).client_shares == {}


def test_refuses_a_roster_without_its_own_keys() -> None:
    def swapped_keys(state: ScriptedRound) -> dict[str, Any]:
        answer = state.roster_answer()
        (own,) = [e for e in answer["roster"] if e["client_id"] == CLIENT]
        own["masking_key"] = messages.encode(keys.generate().public)  # the server's own key
        return answer

    assert refused("with its own keys", roster=swapped_keys).client_shares == {}


def test_refuses_to_send_a_weight_over_max_weight() -> None:
    over = SecAggParams().max_weight + 1
    assert refused("max_weight", examples=over).masked is None


def tampered(state: ScriptedRound) -> dict[str, Any]:
    answer = state.inbox_answer()
    ciphertext = bytearray(messages.decode(answer["shares"]["3"], keys.CIPHERTEXT_BYTES, "3"))
    ciphertext[-1] ^= 1
    answer["shares"]["3"] = messages.encode(bytes(ciphertext))
    return answer


def test_refuses_an_inbox_that_does_not_decrypt() -> None:
    assert refused("from 3 does not decrypt", inbox=tampered).masked is None


def withheld(state: ScriptedRound) -> dict[str, Any]:
    answer = state.inbox_answer()
    answer["shares"] = dict(list(answer["shares"].items())[:1])  # fewer than t
    return answer


@pytest.mark.parametrize(
    "script",
    [{"inbox": withheld}, {"unmask": lambda state: state.unmask_answer(dropped=("0", "1"))}],
    ids=["too-few-shares", "too-few-survivors"],
)
def test_leaves_a_round_with_fewer_than_t_neighbours(script: dict[str, Script]) -> None:
    # Drop-outs beyond the threshold, or a server withholding them: the client reveals
    # nothing more in that round and goes on with the next (here: the run's end).
    with scripted_server(**script) as server:
        summary = run_client(server)
    assert summary.stale_rounds == [1] and summary.rounds_trained == []
    assert server.state.reveals == []


def test_the_cli_client_exits_non_zero_with_the_reason() -> None:
    with scripted_server(unmask=both_lists) as server:
        done = run_cli(
            "client", "--server", server.url, "--trainer", "numpy-delta", "--client-id", CLIENT,
            "--num-clients", "5", timeout=TIMEOUT,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "refused" in done.stderr and "both survived and dropped" in done.stderr
    assert server.state.reveals == []


def next_roster(own_keys: bool) -> Script:
    """An unmask request with round 2's roster: the client's announced keys (or, not
    ``own_keys``, other keys under its id) and four fresh peers'."""

    def unmask(state: ScriptedRound) -> dict[str, Any]:
        answer = state.unmask_answer()
        assert state.next_keys is not None  # announced with the masked input
        state.next_peers = {
            peer: ClientRound(peer, 2, state.params, protocol.SECAGG_BY_EXAMPLES) for peer in PEERS
        }
        mine = {"client_id": CLIENT, **state.next_keys}
        if not own_keys:
            mine = {**mine, "masking_key": messages.encode(keys.generate().public)}
        fields = ("client_id", "encryption_key", "masking_key")
        peers = [{f: p.keys_message()[f] for f in fields} for p in state.next_peers.values()]
        graph = choose_graph(
            len(PEERS) + 1, state.params.dropout_fraction, state.params.corrupt_fraction
        )
        state.next_roster = {
            "round": 2,
            "stage": "shares",
            "roster": sorted([mine, *peers], key=lambda e: e["client_id"]),
            "neighbours": graph.k,
            "threshold": graph.t,
        }
        return {**answer, protocol.SECAGG_NEXT_ROSTER_FIELD: state.next_roster}

    return unmask


def test_the_reveal_carries_shares_for_the_next_rounds_roster_neighbours() -> None:
    with scripted_server(unmask=next_roster(own_keys=True)) as server:
        summary = run_client(server)
    state = server.state
    assert summary.rounds_trained == [1]
    (reveal,) = state.reveals
    # The keys went with the masked input; the reveal has the shares made with them.
    assert protocol.SECAGG_NEXT_KEYS_FIELD not in reveal
    shares = reveal[protocol.SECAGG_NEXT_SHARES_FIELD]
    for peer in state.next_peers.values():
        peer.accept_roster(state.next_roster)
    holders = sorted(name for name, peer in state.next_peers.items() if CLIENT in peer.neighbours)
    assert sorted(shares) == holders and len(holders) >= state.next_peers["0"].threshold
    for name in holders:
        peer = state.next_peers[name]
        ciphertext = messages.decode(shares[name], keys.CIPHERTEXT_BYTES, "share")
        # Sealed for this peer, round 2, from this client: it opens there, nowhere else.
        self_mask, mask_key = keys.open_shares(peer._share_key(CLIENT), 2, CLIENT, name, ciphertext)
        assert len(self_mask) == len(mask_key) == shamir.SHARE_BYTES


def test_refuses_a_next_roster_without_its_announced_keys_before_revealing() -> None:
    state = refused(
        "does not list this client with its own keys", unmask=next_roster(own_keys=False)
    )
    assert state.reveals == []


def test_a_refused_round_drops_the_next_rounds_secrets_made_ahead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The unmask request brings round 2's roster (the client makes its round-2 secrets
    # and shares), then the reveal's answer flips a peer: the client refuses, and its
    # round-2 state is closed as its round-1 state is, not left to the garbage collector.
    closed: list[tuple[int, bool]] = []
    close = ClientRound.close

    def recording_close(self: ClientRound) -> None:
        close(self)
        closed.append((self.server_round, self._self_mask is None))

    monkeypatch.setattr(ClientRound, "close", recording_close)
    state = refused(
        "other share",
        unmask=next_roster(own_keys=True),
        reveal=lambda state: state.unmask_answer(dropped=("3",)),
    )
    assert protocol.SECAGG_NEXT_SHARES_FIELD in state.reveals[0]
    assert sorted(closed) == [(1, True), (2, True)]
