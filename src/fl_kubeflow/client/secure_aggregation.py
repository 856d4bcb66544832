"""A client's part in one secure-aggregation round (docs/secure_aggregation.md).

``ClientRound`` holds one round's secrets (two X25519 key pairs, the self-mask seed
``b``, the shares neighbours sent) and turns each server answer into the next
message, checking every answer first: a roster it is not on with its own keys, a
graph other than ``choose_graph`` gives, a share that does not decrypt, or an
unmask request that would reveal both secrets of one peer is a ``SecAggViolation``
(the client's run ends); fewer than ``t`` neighbours left is ``RoundAbandoned``
(the client sends nothing more in that round and waits for the next).
``run_secure_round`` is the stage sequence over HTTP (keys -> roster -> shares ->
inbox -> masked -> unmask -> reveal).

What a client reveals, per round: its two public keys; per neighbour, its two
shares encrypted to that neighbour; its masked vector; and per neighbour in its
inbox at most one share ever: of ``b`` if the server names the neighbour a
survivor, of the neighbour's masking key if it names it dropped.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from fl_kubeflow import protocol, wire
from fl_kubeflow.client.transport import Answer, BufferBody
from fl_kubeflow.recycling import Recycler
from fl_kubeflow.secagg import graph, keys, masks, messages, shamir
from fl_kubeflow.secagg.params import MIN_CLIENTS, SecAggParams, choose_graph
from fl_kubeflow.secagg.quantise import Quantiser, WeightError
from fl_kubeflow.secagg.vector import Layout

log = logging.getLogger("fl_kubeflow.client")

# The two kinds of share a client may reveal for a neighbour: the reveal's field names.
SELF_MASK = "self_mask_shares"
MASK_KEY = "mask_key_shares"

# A request: (method, path, keyword arguments of Transport.request) -> response.
Call = Callable[..., Answer]


class SecAggViolation(Exception):
    """This client refuses to go on with a secure round, and says why.

    Raised when the server asks for what an honest server never asks (both shares of
    one peer, a roster without this client's keys, a graph other than the agreed
    one, shares that do not decrypt), and when the round's options exclude this
    client (a weight over ``max_weight``). Ends the client's run.
    """


class RoundAbandoned(Exception):
    """This client leaves a secure round it cannot finish safely, revealing nothing more.

    Fewer than ``t`` of its neighbours sent shares, or survived: drop-outs beyond the
    threshold (an honest server's round fails then too) or a server withholding
    them. Not a violation: the client waits for the next round.
    """


@dataclass
class AnnouncedKeys:
    """Two fresh key pairs a client announces with its masked input, for the next round
    alone; and that round, made with them, once the unmask request brought its roster
    and this client's reveal carried its shares (``ahead``: docs/secure_aggregation.md)."""

    server_round: int
    encryption: keys.KeyPair
    masking: keys.KeyPair
    ahead: ClientRound | None = None

    @classmethod
    def fresh(cls, server_round: int) -> AnnouncedKeys:
        return cls(server_round, keys.generate(), keys.generate())

    def close_ahead(self) -> None:
        """Drop the round made ahead with these keys, if any: its secrets go unused."""
        if self.ahead is not None:
            self.ahead.close()
            self.ahead = None

    def message(self) -> dict[str, str]:
        """The two public keys (``next_keys``; the masked input's header holds it as JSON)."""
        return {
            "encryption_key": messages.encode(self.encryption.public),
            "masking_key": messages.encode(self.masking.public),
        }


@dataclass
class SecureOutcome:
    """What a client's secure round leaves: the metrics sent, the reveal's answer if it
    is the next model, and the keys announced for the next round."""

    metrics: dict[str, float]
    next_model: Answer | None
    next_keys: AnnouncedKeys | None


class ClientRound:
    """One client's state in one secure round; its secrets never leave it unencrypted.

    Args:
        client_id: This client's id.
        server_round: The round.
        params: The round's options (``SecAggParams.from_config`` of the round config).
        weighting: ``"examples"`` (weight = example count) or ``"uniform"`` (weight 1).
        announced: The keys this client announced for this round in the previous one's
            reveal, when the server took them (the round config says so); None: fresh
            keys, sent in the key stage.
        roster: The roster the model answer carried (keys announced, the key stage
            closed already); None: asked for.
    """

    def __init__(
        self,
        client_id: str,
        server_round: int,
        params: SecAggParams,
        weighting: str,
        announced: AnnouncedKeys | None = None,
        roster: Any = None,
    ) -> None:
        if weighting not in protocol.SECAGG_WEIGHTINGS:
            raise SecAggViolation(
                f"round {server_round}: weighting {weighting!r} is not one of "
                f"{protocol.SECAGG_WEIGHTINGS}"
            )
        self.client_id = client_id
        self.server_round = server_round
        self.params = params
        self.weighting = weighting
        if announced is not None and announced.server_round != server_round:
            raise ValueError(f"keys announced for round {announced.server_round}, not this one")
        # Keys are fresh for every round: announced ones were made for this round alone.
        self.announced = announced is not None
        self._encryption = announced.encryption if announced else keys.generate()
        self._masking = announced.masking if announced else keys.generate()
        self.given_roster = roster if announced else None
        # The inbox the model answer carried, for a round whose shares went ahead.
        self.given_inbox: Any = None
        # The keys announced in this round for the next (``announce_next``), and this
        # client's shares for the next round's neighbours once its roster came
        # (``accept_next_roster``).
        self.next_keys: AnnouncedKeys | None = None
        self._next_shares: dict[str, str] = {}
        self._self_mask: bytes | None = None
        # client id -> (encryption key, masking key), and each one's share x (1-based).
        self._roster: dict[str, tuple[bytes, bytes]] = {}
        self._position: dict[str, int] = {}
        self.neighbours: list[str] = []
        self.threshold = 0
        # sender -> (its self-mask share, its masking-key share), held for this client.
        self._inbox: dict[str, tuple[bytes, bytes]] = {}
        # neighbour -> the key of the shares both send each other (``_share_key``).
        self._share_keys: dict[str, bytes] = {}
        # neighbour -> the kind of share asked for (SELF_MASK or MASK_KEY): one kind ever.
        self.asked: dict[str, str] = {}
        # The neighbours whose pair masks ``premask`` added (until ``finish_mask``).
        self._premasked: list[str] | None = None

    def __repr__(self) -> str:
        return f"ClientRound({self.client_id!r}, round {self.server_round})"

    @classmethod
    def from_config(
        cls,
        client_id: str,
        server_round: int,
        config: Mapping[str, Any],
        announced: AnnouncedKeys | None = None,
    ) -> ClientRound:
        """The round a round config's ``protocol.SECAGG_CONFIG_KEY`` entry describes; with
        ``announced`` keys if they are for this round and the config says they were taken."""
        if announced is not None and not (
            announced.server_round == server_round
            and config.get(protocol.SECAGG_ANNOUNCED_KEY) is True
        ):
            announced.close_ahead()  # its secrets go with the keys
            announced = None
        entry = config[protocol.SECAGG_CONFIG_KEY]
        try:
            params = SecAggParams.from_config(entry)
        except (TypeError, ValueError) as exc:
            raise SecAggViolation(
                f"round {server_round}: bad secure-aggregation config: {exc}"
            ) from None
        weighting = entry.get(protocol.SECAGG_WEIGHTING_KEY, protocol.SECAGG_BY_EXAMPLES)
        ahead = None if announced is None else announced.ahead
        if ahead is not None:
            assert announced is not None
            inbox = config.get(protocol.SECAGG_INBOX_KEY)
            if inbox is not None and (ahead.params, ahead.weighting) == (params, weighting):
                # The round this client shared for in the previous one: its roster checked
                # then, its shares sent; the server's inbox of it came with the model.
                ahead.given_inbox = inbox
                return ahead
            # The server took the keys without those shares: new shares, a new self mask.
            announced.close_ahead()
        return cls(
            client_id,
            server_round,
            params,
            weighting,
            announced,
            config.get(protocol.SECAGG_ROSTER_KEY),
        )

    def _refuse(self, reason: str) -> SecAggViolation:
        return SecAggViolation(f"client {self.client_id}, round {self.server_round}: {reason}")

    def _check_round(self, answer: Any, stage: str) -> None:
        if not isinstance(answer, dict) or answer.get("round") != self.server_round:
            round_ = answer.get("round") if isinstance(answer, dict) else None
            raise self._refuse(f"the {stage} answer is for round {round_!r}")

    # ------------------------------------------------------------------ keys, roster

    def keys_message(self) -> dict[str, Any]:
        """The body of ``POST /v1/secagg/keys``: this round's two public keys."""
        return {
            "client_id": self.client_id,
            "round": self.server_round,
            "encryption_key": messages.encode(self._encryption.public),
            "masking_key": messages.encode(self._masking.public),
        }

    def accept_roster(self, answer: Any) -> None:
        """Check the roster (``POST keys``'s 200 answer or ``GET roster``) and take it.

        Raises:
            SecAggViolation: not this round; ids not distinct and sorted; a key
                malformed or used twice; this client missing or with other keys;
                fewer than MIN_CLIENTS; ``neighbours``/``threshold`` not what
                ``choose_graph`` gives for the roster's size.
        """
        self._check_round(answer, "roster")
        entries = answer.get("roster")
        if not isinstance(entries, list):
            raise self._refuse("the roster answer has no roster list")
        try:
            roster = [
                (
                    str(entry["client_id"]),
                    messages.decode(entry["encryption_key"], keys.KEY_BYTES, "encryption_key"),
                    messages.decode(entry["masking_key"], keys.KEY_BYTES, "masking_key"),
                )
                for entry in entries
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise self._refuse(f"malformed roster entry: {exc}") from None
        ids = [client_id for client_id, _, _ in roster]
        if ids != sorted(set(ids)):
            raise self._refuse("the roster's client ids are not distinct and sorted")
        all_keys = [key for _, enc, mask in roster for key in (enc, mask)]
        if len(set(all_keys)) != len(all_keys):
            raise self._refuse("the roster uses one public key twice")
        own = (self.client_id, self._encryption.public, self._masking.public)
        if own not in roster:
            raise self._refuse("the roster does not list this client with its own keys")
        if len(roster) < MIN_CLIENTS:
            raise self._refuse(
                f"a roster of {len(roster)} clients cannot hide an input (at least {MIN_CLIENTS})"
            )
        try:
            expected = choose_graph(
                len(roster), self.params.dropout_fraction, self.params.corrupt_fraction
            )
        except ValueError as exc:
            raise self._refuse(f"no graph for this roster: {exc}") from None
        claimed = (answer.get("neighbours"), answer.get("threshold"))
        if claimed != (expected.k, expected.t):
            raise self._refuse(
                f"the server says k={claimed[0]!r}, t={claimed[1]!r}; for {len(roster)} clients "
                f"and fractions {self.params.dropout_fraction:g}/"
                f"{self.params.corrupt_fraction:g} they are k={expected.k}, t={expected.t}"
            )
        self._roster = {client_id: (enc, mask) for client_id, enc, mask in roster}
        self._position = {client_id: i + 1 for i, client_id in enumerate(ids)}
        self.threshold = expected.t
        graph_of = graph.neighbours(ids, expected.k, graph.roster_seed(roster))
        self.neighbours = list(graph_of[self.client_id])

    # ------------------------------------------------------------------ shares, inbox

    def shares_message(self) -> dict[str, Any]:
        """The body of ``POST /v1/secagg/shares``: ``b`` and the masking private key,
        Shamir-split among the neighbours and encrypted to each."""
        self._self_mask = secrets.token_bytes(shamir.SECRET_BYTES)
        xs = [self._position[peer] for peer in self.neighbours]
        self_mask_shares = shamir.split(self._self_mask, self.threshold, xs)
        mask_key_shares = shamir.split(self._masking.private, self.threshold, xs)
        ciphertexts = {
            peer: messages.encode(
                keys.seal_shares(
                    self._share_key(peer),
                    self.server_round,
                    self.client_id,
                    peer,
                    self_mask_shares[x],
                    mask_key_shares[x],
                )
            )
            for peer, x in zip(self.neighbours, xs, strict=True)
        }
        return {"client_id": self.client_id, "round": self.server_round, "shares": ciphertexts}

    def _share_key(self, peer: str) -> bytes:
        """The key of the shares this client and ``peer`` send each other this round: one
        X25519 agreement serves both directions (ValueError for a malformed key)."""
        key = self._share_keys.get(peer)
        if key is None:
            key = keys.share_key(self._encryption.private, self._roster[peer][0], self.server_round)
            self._share_keys[peer] = key
        return key

    def accept_inbox(self, answer: Any) -> None:
        """Decrypt the shares neighbours sent (``POST shares``'s 200 answer or ``GET inbox``).

        Raises:
            SecAggViolation: not this round; a sender that is not a neighbour; a share
                that does not decrypt for its sender, this client and round.
            RoundAbandoned: fewer than ``t`` senders: this client's own secrets could
                not be rebuilt, and its masked input, with fewer pair masks than its
                ``b`` has holders, would be exposed to a server withholding shares.
        """
        self._check_round(answer, "inbox")
        inbox = answer.get("shares")
        if not isinstance(inbox, dict):
            raise self._refuse("the inbox answer has no shares")
        strangers = sorted(set(inbox) - set(self.neighbours))
        if strangers:
            raise self._refuse(f"the inbox has shares from non-neighbours {strangers}")
        for sender, text in inbox.items():
            try:
                ciphertext = messages.decode(text, keys.CIPHERTEXT_BYTES, f"share of {sender}")
                self._inbox[sender] = keys.open_shares(
                    self._share_key(sender),
                    self.server_round,
                    sender,
                    self.client_id,
                    ciphertext,
                )
            except (ValueError, keys.DecryptionError) as exc:
                raise self._refuse(f"the share from {sender} does not decrypt: {exc}") from None
        if len(inbox) < self.threshold:
            raise RoundAbandoned(
                f"client {self.client_id}, round {self.server_round}: only {len(inbox)} of "
                f"{len(self.neighbours)} neighbours sent shares; the threshold is {self.threshold}"
            )

    # ------------------------------------------------------------------ masked input

    def masked_vector(
        self, trained: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], num_examples: int
    ) -> tuple[np.ndarray, int]:
        """The masked input and how many elements were clipped to the range.

        ``trained - base`` quantised with its weight (the example count or 1), plus
        PRG(b), plus PRG(s_ij) for each inbox neighbour j after this client in id
        order and minus it for each before. The same as ``encode``, ``premask`` and
        ``finish_mask`` in turn (which ``run_secure_round`` spreads over the stages).

        Raises:
            SecAggViolation: the weight is not in 1..max_weight.
        """
        vector, clipped = self.encode(trained, base, num_examples)
        self.premask(vector)
        self.finish_mask(vector)
        return vector, clipped

    def encode(
        self,
        trained: Mapping[str, np.ndarray],
        base: Mapping[str, np.ndarray],
        num_examples: int,
        arrays: Recycler | None = None,
    ) -> tuple[np.ndarray, int]:
        """The unmasked input: ``trained - base`` quantised with its weight (the example
        count or 1), and how many elements were clipped to the range. Needs nothing of
        the round's stages.

        The change is quantised a cache-sized piece at a time as it is computed (no
        change-sized float64 vector), into memory from ``arrays`` (an earlier round's
        masked vector, whose pages are mapped already: recycling.py) or new.

        Raises:
            SecAggViolation: the weight is not in 1..max_weight.
        """
        weight = num_examples if self.weighting == protocol.SECAGG_BY_EXAMPLES else 1
        layout = Layout.of(base)
        quantiser = Quantiser(self.params)
        out = None if arrays is None else arrays.empty((layout.size,), quantiser.dtype)
        try:
            return quantiser.encode_chunks(
                layout.change_chunks(trained, base), layout.size - 1, weight, out
            )
        except WeightError as exc:
            raise self._refuse(
                f"weight {weight} cannot be sent (max_weight={self.params.max_weight}): {exc}"
            ) from None

    def premask(self, vector: np.ndarray) -> None:
        """Add PRG(b) and the pair mask of every neighbour to ``vector`` in place: all it
        needs are the roster and ``b`` (after ``shares_message``), so it can run while
        the share stage is open. ``finish_mask`` then takes out the pair masks of
        neighbours that sent no shares."""
        self._premasked = list(self.neighbours)
        masks.apply_masks(
            vector, [(self._self_mask_seed(), +1), *self._pair_streams(self._premasked, +1)]
        )

    def finish_mask(self, vector: np.ndarray) -> None:
        """After ``accept_inbox``: remove from a ``premask``-ed vector the pair masks of the
        neighbours missing from the inbox; the vector then holds PRG(b) and exactly
        the inbox neighbours' pair masks."""
        if self._premasked is None:
            raise RuntimeError("finish_mask before premask")
        missing = [peer for peer in self._premasked if peer not in self._inbox]
        self._premasked = None
        if missing:
            masks.apply_masks(vector, self._pair_streams(missing, -1))

    def _pair_streams(self, peers: list[str], sign: int) -> list[tuple[bytes, int]]:
        """``sign`` times each peer's pair mask: +PRG(s_ij) if this client's id sorts
        first, -PRG(s_ij) otherwise."""
        return [
            (
                keys.pair_seed(self._masking.private, self._roster[peer][1], self.server_round),
                sign if self.client_id < peer else -sign,
            )
            for peer in peers
        ]

    def _self_mask_seed(self) -> bytes:
        if self._self_mask is None:
            raise RuntimeError("masked_vector before shares_message")
        return self._self_mask

    # ------------------------------------------------------------------ the next round, ahead

    def announce_next(self) -> dict[str, str]:
        """The masked input's ``X-FL-Next-Keys`` header: fresh keys for the next round alone."""
        self.next_keys = AnnouncedKeys.fresh(self.server_round + 1)
        return {protocol.SECAGG_NEXT_KEYS_HEADER: json.dumps(self.next_keys.message())}

    def accept_next_roster(self, request: Any) -> None:
        """Take the next round's roster an unmask request carries (none: nothing to do):
        checked as any roster, by that round's ``ClientRound`` of the announced keys,
        which splits and encrypts its secrets now; the reveal then carries them.

        Raises:
            SecAggViolation: the roster fails ``accept_roster``'s checks, or came without
                keys announced.
        """
        if not isinstance(request, dict):
            return  # reveal_message refuses it
        roster = request.get(protocol.SECAGG_NEXT_ROSTER_FIELD)
        if roster is None or (self.next_keys is not None and self.next_keys.ahead is not None):
            return
        if self.next_keys is None:
            raise self._refuse("the unmask request has a next roster; no keys were announced")
        ahead = ClientRound(
            self.client_id,
            self.server_round + 1,
            self.params,
            self.weighting,
            self.next_keys,
        )
        ahead.accept_roster(roster)
        self._next_shares = ahead.shares_message()["shares"]
        self.next_keys.ahead = ahead

    # ------------------------------------------------------------------ unmask, reveal

    def reveal_message(self, request: Any) -> dict[str, Any]:
        """The body of ``POST /v1/secagg/reveal`` for an unmask request.

        Per inbox neighbour: its ``b`` share if the request names it a survivor, its
        masking-key share if it names it dropped; one kind per neighbour for the
        whole round, whatever later requests say.

        Raises:
            SecAggViolation: not this round; a peer in both lists, or not on the
                roster; this client not a survivor; an inbox neighbour in neither
                list; a neighbour whose kind differs from an earlier request's.
            RoundAbandoned: fewer than ``t`` surviving neighbours.
        """
        self._check_round(request, "unmask")
        survivors, dropped = request.get("survivors"), request.get("dropped")
        if not all(
            isinstance(ids, list) and all(isinstance(i, str) for i in ids)
            for ids in (survivors, dropped)
        ):
            raise self._refuse("the unmask request has no survivors and dropped lists of ids")
        both = sorted(set(survivors) & set(dropped))
        if both:
            raise self._refuse(f"the unmask request names {both} both survived and dropped")
        unknown = sorted((set(survivors) | set(dropped)) - set(self._roster))
        if unknown:
            raise self._refuse(f"the unmask request names {unknown}, not on the roster")
        if self.client_id not in survivors:
            raise self._refuse("the unmask request does not list this client as a survivor")
        kinds: dict[str, str] = {}
        for peer in self._inbox:
            if peer in survivors:
                kinds[peer] = SELF_MASK
            elif peer in dropped:
                kinds[peer] = MASK_KEY
            else:
                raise self._refuse(
                    f"neighbour {peer} sent shares but is neither survivor nor dropped"
                )
        flipped = sorted(p for p, kind in kinds.items() if self.asked.get(p, kind) != kind)
        if flipped:
            raise self._refuse(
                f"asked for the other share of {flipped} than before: both shares of one "
                "peer would unmask it"
            )
        alive = sum(kind == SELF_MASK for kind in kinds.values())
        if alive < self.threshold:
            raise RoundAbandoned(
                f"client {self.client_id}, round {self.server_round}: only {alive} neighbours "
                f"survived; the threshold is {self.threshold}"
            )
        self.asked.update(kinds)
        reveal: dict[str, Any] = {
            "client_id": self.client_id,
            "round": self.server_round,
            SELF_MASK: {},
            MASK_KEY: {},
        }
        if self.next_keys is None:
            # Not announced with the masked input (a client that sends one without
            # them): announced here, for the next round's key stage.
            self.next_keys = AnnouncedKeys.fresh(self.server_round + 1)
            reveal[protocol.SECAGG_NEXT_KEYS_FIELD] = self.next_keys.message()
        elif self.next_keys.ahead is not None:
            reveal[protocol.SECAGG_NEXT_SHARES_FIELD] = self._next_shares
        for peer, kind in kinds.items():
            self_mask_share, mask_key_share = self._inbox[peer]
            share = self_mask_share if kind == SELF_MASK else mask_key_share
            reveal[kind][peer] = messages.encode(share)
        return reveal

    def close(self) -> None:
        """Drop the round's secrets (keys, seed, shares held): the round is over."""
        self._encryption = self._masking = keys.KeyPair(b"", b"")
        self._self_mask = None
        self._inbox.clear()
        self._share_keys.clear()


def run_secure_round(
    call: Call,
    secure: ClientRound,
    trained: Mapping[str, np.ndarray],
    base: Mapping[str, np.ndarray],
    num_examples: int,
    metrics: dict[str, float],
    *,
    poll_wait: float,
    request_timeout: float,
    timeout: float,
    arrays: Recycler | None = None,
) -> SecureOutcome:
    """Take part in a secure round's stages after training.

    Returns the training metrics sent, the reveal's answer when it is the next round's
    model (a 200 safetensors answer read into ``response.buffer``, as ``GET /v1/model``
    is read; None: the client long-polls for that model), and the keys announced for
    the next round.

    Args:
        call: Sends a request (``FederatedClient._call``); raises the server's refusals
            as ``ServerError`` (409 ``wrong_round``: the round went on without us).
        secure: The round's state (closed on return).
        trained: The trained (and clipped) model.
        base: The round's global model as this client decoded it.
        num_examples: The example count (the weight under "examples" weighting).
        metrics: Training metrics; ``secagg_clipped`` is added.
        poll_wait: Seconds each POST and long-poll asks the server to hold.
        request_timeout: Read timeout of a request beyond what it asked the server to hold.
        timeout: Longest wait, in seconds, for the stages' answers altogether.
        arrays: Where the masked vector's memory comes from (the client's, reused round
            after round: no fresh pages to fault in); None: new memory.

    Raises:
        SecAggViolation: the client refuses (see ``ClientRound``).
        RoundAbandoned: the client leaves this round (see ``ClientRound``).
        TimeoutError: the stages did not complete within ``timeout``.
    """
    stages = _Stages(
        call, secure.server_round, poll_wait, request_timeout, time.monotonic() + timeout
    )
    # The input is encoded while the key stage's answer is awaited and masked while the
    # share stage's is (both need nothing the server sends after): at the masked stage
    # the client only takes out the masks of neighbours that sent no shares, and sends.
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"secagg-{secure.client_id}")
    try:
        encoded = worker.submit(secure.encode, trained, base, num_examples, arrays)
        # Roster and shares went in the previous round if the inbox came with the model.
        shares = None if secure.given_inbox is not None else _roster_and_shares(stages, secure)
        premasked = worker.submit(_premask, secure, encoded)
        secure.accept_inbox(
            secure.given_inbox
            if shares is None
            else stages.post(protocol.SECAGG_SHARES_PATH, protocol.SECAGG_INBOX_PATH, json=shares)
        )
        vector, clipped = premasked.result(timeout=stages.remaining())
        secure.finish_mask(vector)
        metrics = {**metrics, "secagg_clipped": float(clipped)}
        headers = {
            protocol.ROUND_HEADER: str(secure.server_round),
            protocol.METRICS_HEADER: json.dumps(metrics),
            "Content-Type": wire.CONTENT_TYPE,
            **secure.announce_next(),
        }
        body = BufferBody(wire.encode_parts({protocol.SECAGG_MASKED_TENSOR: vector}))
        request = stages.post(
            protocol.SECAGG_MASKED_PATH, protocol.SECAGG_UNMASK_PATH, data=body, headers=headers
        )
        del vector, body
        # An honest server accepts the reveal, with the next round's model as its answer
        # when that came in time; one that answers with another unmask request gets the
        # same shares again, or a refusal if a peer's kind changed.
        while True:
            secure.accept_next_roster(request)
            response = stages.post_last(
                protocol.SECAGG_REVEAL_PATH, json=secure.reveal_message(request)
            )
            if _is_model(response):
                return SecureOutcome(metrics, response, secure.next_keys)
            answer = _json_of(response, protocol.SECAGG_REVEAL_PATH, secure.server_round)
            if "survivors" not in answer:
                return SecureOutcome(metrics, None, secure.next_keys)
            log.warning(
                "client %s: a second unmask request in round %d",
                secure.client_id,
                secure.server_round,
            )
            request = answer
    finally:
        # The worker uses the round's secrets: it ends before they are dropped.
        worker.shutdown(wait=True, cancel_futures=True)
        secure.close()


def _roster_and_shares(stages: _Stages, secure: ClientRound) -> dict[str, Any]:
    """The key stage (the roster asked for or given, and checked) and the share stage's
    message: ``b`` drawn, the shares sealed to the neighbours."""
    if not secure.announced:
        roster = stages.post(
            protocol.SECAGG_KEYS_PATH, protocol.SECAGG_ROSTER_PATH, json=secure.keys_message()
        )
    elif secure.given_roster is None:
        roster = stages.get(protocol.SECAGG_ROSTER_PATH)
    else:
        roster = secure.given_roster
    secure.accept_roster(roster)
    return secure.shares_message()


def _premask(
    secure: ClientRound, encoded: Future[tuple[np.ndarray, int]]
) -> tuple[np.ndarray, int]:
    """The encoded input with ``secure.premask``'s masks added (on the round's worker)."""
    vector, clipped = encoded.result()
    secure.premask(vector)
    return vector, clipped


class _Stages:
    """POSTs that may hold for the next stage's input, and the long-polls that follow a 202."""

    def __init__(
        self,
        call: Call,
        server_round: int,
        poll_wait: float,
        request_timeout: float,
        deadline: float,
    ) -> None:
        self.call, self.server_round = call, server_round
        self.poll_wait, self.request_timeout, self.deadline = poll_wait, request_timeout, deadline

    def remaining(self) -> float:
        """Seconds left until the deadline (0 once past it)."""
        return max(0.0, self.deadline - time.monotonic())

    def _wait(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"secure round {self.server_round}: the server's answers did not come in time"
            )
        return min(self.poll_wait, remaining)

    def post(self, path: str, then: str | None, **kwargs: Any) -> dict[str, Any]:
        """POST to ``path``; on 202, long-poll ``then`` until it answers 200."""
        wait = self._wait()
        response = self.call(
            "POST",
            path,
            params={protocol.WAIT_PARAM: f"{wait:.3f}"},
            read_timeout=wait + self.request_timeout,
            **kwargs,
        )
        if response.status_code == 200:
            return _json_of(response, path, self.server_round)
        if then is None or response.status_code != 202:
            raise SecAggViolation(
                f"round {self.server_round}: {path} answered {response.status_code}"
            )
        return self.get(then)

    def get(self, path: str) -> dict[str, Any]:
        """Long-poll ``path`` until it answers 200."""
        while True:
            wait = self._wait()
            response = self.call(
                "GET",
                path,
                params={
                    protocol.ROUND_PARAM: self.server_round,
                    protocol.WAIT_PARAM: f"{wait:.3f}",
                },
                read_timeout=wait + self.request_timeout,
            )
            if response.status_code == 200:
                return _json_of(response, path, self.server_round)
            if response.status_code != 204:
                raise SecAggViolation(
                    f"round {self.server_round}: {path} answered {response.status_code}"
                )

    def post_last(self, path: str, **kwargs: Any) -> Answer:
        """POST the round's last message, asking for the next round's model as its answer
        (``next=1``, as an update does: docs/protocol.md, Update and next model).

        The answer is read into ``response.buffer``: a model (200 safetensors), or JSON
        (202: no model within the wait; 200: the server's own answer)."""
        wait = self._wait()
        return self.call(
            "POST",
            path,
            params={protocol.NEXT_PARAM: "1", protocol.WAIT_PARAM: f"{wait:.3f}"},
            read_timeout=wait + self.request_timeout,
            into_buffer=True,
            **kwargs,
        )


def _is_model(response: Answer) -> bool:
    """Whether a 200 answer's body is a model (safetensors), not JSON."""
    kind = response.headers.get("Content-Type", "").split(";")[0]
    return response.status_code == 200 and kind == wire.CONTENT_TYPE


def _json_of(response: Answer, path: str, server_round: int) -> dict[str, Any]:
    """A stage answer's JSON object (read into ``response.buffer`` or not)."""
    buffer = getattr(response, "buffer", None)
    try:
        value = json.loads(bytes(buffer)) if buffer is not None else response.json()
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise SecAggViolation(
            f"round {server_round}: {path} answered {response.status_code} without a JSON object"
        )
    return value
