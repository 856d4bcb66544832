"""One secure-aggregation round on the server: SecAgg+'s stages, the masked sum, the unmask.

docs/secure_aggregation.md is the protocol. A ``SecureRound`` is plain data without
a lock of the Federation's kind: the Federation calls every method under its lock
except ``check_masked``, ``fold`` and ``unmask``, which run outside it (a masked
input is model-sized; the unmask is the round's heavy part). The sets of the
paper: U1 the roster (keys in), U2 those of it whose shares are in, U3 those of U2
whose masked input is in (the survivors), U4 those of U3 whose reveal is in.

What it stores for a client: its two public keys, ciphertexts it cannot read, its
masked input only as part of one running sum (one vector, whatever the number of
clients), and then either shares of its self mask (it survived) or of its masking
key (it dropped), never both: ``add_reveal`` refuses a share of the other kind.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from fl_kubeflow.protocol import SECAGG_MASKED_TENSOR, SecAggStage
from fl_kubeflow.recycling import Recycler
from fl_kubeflow.secagg import graph, keys, masks, messages, shamir
from fl_kubeflow.secagg.params import MIN_CLIENTS, GraphParams, SecAggParams, choose_graph
from fl_kubeflow.secagg.quantise import Quantiser, WeightError
from fl_kubeflow.secagg.vector import Layout
from fl_kubeflow.server.errors import BadRequest, Conflict, InvalidUpdate, WrongRound
from fl_kubeflow.server.records import summarise_ids
from fl_kubeflow.wire import Weights

# The stages in the order a round goes through them.
STAGES = tuple(SecAggStage)
# Elements of the running sum per lock: concurrent folds and mask removals move through it
# one behind the other (1 MiB of uint32; a multiple of masks.ALIGN).
STRIPE = 1 << 18


class SecureRoundFailed(Exception):
    """The round cannot produce a model: the run fails with this reason."""


class ModularSum:
    """The running sum of masked inputs modulo 2**bits: one vector, whatever N.

    Several request threads may fold at once; each stripe of the vector has its
    own lock, and numpy's unsigned addition wraps, which is the modular sum.

    Args:
        size: The vector's length.
        dtype: uint32 or uint64.
        arrays: Where the vector's memory comes from: an earlier round's, zeroed
            (fresh pages cost a page fault each on the first fold: recycling.py); None:
            new.
    """

    def __init__(self, size: int, dtype: np.dtype, arrays: Recycler | None = None) -> None:
        if arrays is None:
            self.vector = np.zeros(size, dtype)
        else:
            self.vector = arrays.empty((size,), dtype)
            self.vector.fill(0)
        self._locks = [threading.Lock() for _ in range(0, size, STRIPE)]

    def add(self, values: np.ndarray) -> None:
        """``vector += values`` modulo 2**bits (``values``: same length and dtype)."""
        for lock, lo in zip(self._locks, range(0, values.size, STRIPE), strict=True):
            part = self.vector[lo : lo + STRIPE]
            with lock:
                np.add(part, values[lo : lo + STRIPE], out=part)

    def apply_masks(self, streams: Sequence[tuple[bytes, int]]) -> None:
        """``vector += sign * PRG(seed)`` for each stream, a stripe at a time under its lock
        (alongside other threads doing the same), the second half of the stripes on a
        thread of its own: AES-CTR and numpy's addition release the GIL, so a removal
        uses both cores."""
        starts = range(0, self.vector.size, STRIPE)
        half = len(starts) // 2
        if not streams:
            return
        if half == 0:
            self._apply_stripes(streams, 0, len(starts))
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="secagg-unmask") as pool:
            second = pool.submit(self._apply_stripes, streams, half, len(starts))
            self._apply_stripes(streams, 0, half)
            second.result()

    def _apply_stripes(self, streams: Sequence[tuple[bytes, int]], first: int, end: int) -> None:
        """``apply_masks`` on stripes ``first`` to ``end`` (exclusive)."""
        for index in range(first, end):
            lo = index * STRIPE
            with self._locks[index]:
                masks.apply_masks(self.vector[lo : lo + STRIPE], streams, offset=lo)


class SecureRound:
    """The server's state of one SecAgg+ round.

    Args:
        number: The round.
        params: The run's secure-aggregation options.
        weighting: ``Strategy.secure_weighting``: "examples" or "uniform".
        layout: The global model as one vector (``Layout.of(global)``).
        opened: When the round opened (monotonic).
        round_timeout: Seconds from then the key stage may take (clients train first).
        arrays: Where the running sum's memory comes from (the run's, reused round
            after round); None: new memory.
    """

    def __init__(
        self,
        number: int,
        params: SecAggParams,
        weighting: str,
        layout: Layout,
        opened: float,
        round_timeout: float,
        arrays: Recycler | None = None,
    ) -> None:
        self.number = number
        self._arrays = arrays
        self.params = params
        self.quantiser = Quantiser(params)
        self.weighting = weighting
        self.layout = layout
        self.stage = SecAggStage.KEYS
        self.round_timeout = round_timeout
        self.opened = opened
        self.deadline = opened + round_timeout
        # Whether the reveal stage has closed too (the round is being unmasked).
        self.closed = False
        # Keys: client -> (encryption key, masking key), U1 once the stage closed.
        self.keys: dict[str, tuple[bytes, bytes]] = {}
        # Those whose keys were announced in the previous round: they train after the key
        # stage, not before it.
        self.announced: set[str] = set()
        # Whether the key and share stages ran during the previous round (``open_ahead``):
        # the clients then train during the masked stage.
        self.ahead = False
        self.roster: list[str] = []
        self._roster_entries: list[dict[str, str]] | None = None
        self.graph: GraphParams | None = None
        self.neighbours: dict[str, list[str]] = {}
        # Shares routed by receiver: receiver -> sender -> ciphertext.
        self.inboxes: dict[str, dict[str, bytes]] = {}
        self.shared: set[str] = set()
        self.u2: list[str] = []
        # Masked inputs: client -> digest of its body (to tell a resend from another input).
        self.masked: dict[str, bytes] = {}
        self.folding: set[str] = set()
        self.sum: ModularSum | None = None
        self.u3: list[str] = []
        # Reveals: client -> (self-mask shares by peer, masking-key shares by peer).
        self.reveals: dict[str, tuple[dict[str, bytes], dict[str, bytes]]] = {}
        self.u4: list[str] = []
        # Survivors whose self mask is out of the sum already, by the seed removed (taken
        # out as soon as t shares of it were in, during the reveal stage), and those
        # being taken out (outside the lock: the stage cannot close meanwhile).
        self.unmasked: dict[str, bytes] = {}
        self.unmasking: dict[str, bytes] = {}
        # Why the sum is no longer the survivors' masked sum (a removal that failed).
        self.spoiled: str | None = None
        # Survivor -> how many shares of its self mask the reveals hold.
        self._self_mask_held: Counter[str] = Counter()
        self.total_weight: int | None = None
        self.unmask_s: float | None = None

    # ----------------------------------------------------------------- stages

    def submitted(self) -> set[str]:
        """Who has sent the open stage's message."""
        return {
            SecAggStage.KEYS: set(self.keys),
            SecAggStage.SHARES: self.shared,
            SecAggStage.MASKED: set(self.masked),
            SecAggStage.REVEAL: set(self.reveals),
        }[self.stage]

    def expected(self, sampled: Sequence[str]) -> list[str]:
        """Who the open stage waits for: the sampled clients, then the previous stage's."""
        return {
            SecAggStage.KEYS: list(sampled),
            SecAggStage.SHARES: self.roster,
            SecAggStage.MASKED: self.u2,
            SecAggStage.REVEAL: self.u3,
        }[self.stage]

    def advance(
        self, now: float, sampled: Sequence[str], active: Callable[[str], bool], quorum: int
    ) -> float | list[str]:
        """Close the open stage if everyone it waits for has sent, or at its deadline.

        Args:
            now: The time (monotonic).
            sampled: The round's sampled clients (whom the key stage waits for).
            active: Whether a client still takes part (one that left, was revoked or
                timed out is not waited for).
            quorum: The fewest clients a stage before the reveal may close with.

        Returns:
            The clients the stage closed without (it closed), or when to look again.

        Raises:
            SecureRoundFailed: the stage cannot close with enough clients.
        """
        if self.folding or self.unmasking:
            # Masked inputs being folded are in, not missing: wait for them to land; and
            # the unmask waits for the self masks being taken out.
            return now + 1.0
        stage, done = self.stage, self.submitted()
        expected = self.expected(sampled)
        waiting = sorted(c for c in expected if active(c) and c not in done)
        if waiting and now < self.deadline:
            return self.deadline
        # The reveal's sufficiency is the unmask's to judge, secret by secret.
        need = 0 if stage is SecAggStage.REVEAL else quorum
        if len(done) < need:
            if stage is SecAggStage.KEYS and now < self.deadline:
                return self.deadline  # keys may still come from late clients
            limit = (
                f"round_timeout={self.round_timeout:g}s"
                if stage is SecAggStage.KEYS
                else f"secagg timeout={self.params.timeout:g}s"
            )
            raise SecureRoundFailed(
                f"round {self.number}: secure aggregation's {stage.value} stage closed with "
                f"{len(done)} of min_clients={need} clients within {limit}; missing: "
                f"{summarise_ids(set(expected) - done)}"
            )
        self.close_stage(now)
        return waiting

    def close_stage(self, now: float) -> None:
        """Close the open stage with who has sent, and open the next (or end the round).

        Raises:
            SecureRoundFailed: the key stage closed with a roster too small to hide an
                input in the sum, or that no graph serves.
        """
        stage, after = self.stage, now + self.params.timeout
        if stage is SecAggStage.KEYS:
            self.roster = sorted(self.keys)
            if len(self.roster) < MIN_CLIENTS:
                raise SecureRoundFailed(
                    f"round {self.number}: only {len(self.roster)} clients sent keys; secure "
                    f"aggregation needs at least {MIN_CLIENTS} to hide one input in the sum"
                )
            try:
                self.graph = choose_graph(
                    len(self.roster), self.params.dropout_fraction, self.params.corrupt_fraction
                )
            except ValueError as exc:
                raise SecureRoundFailed(
                    f"round {self.number}: no SecAgg+ graph for the {len(self.roster)} clients "
                    f"that sent keys: {exc}"
                ) from None
            entries = [(c, *self.keys[c]) for c in self.roster]
            seed = graph.roster_seed(entries)
            self.neighbours = graph.neighbours(self.roster, self.graph.k, seed)
            if self.announced & set(self.roster):
                # Clients whose keys were announced train after this stage: the shares
                # stage gives them the training's time, as the key stage would have.
                after = max(after, self.opened + self.round_timeout)
            self.stage, self.deadline = SecAggStage.SHARES, after
        elif stage is SecAggStage.SHARES:
            self.u2 = sorted(self.shared)
            if self.ahead:
                # The shares came in the previous round: the clients train now, and the
                # masked stage gives them the training's time.
                after = max(after, self.opened + self.round_timeout)
            self.sum = ModularSum(self.layout.size, self.quantiser.dtype, self._arrays)
            self.stage, self.deadline = SecAggStage.MASKED, after
        elif stage is SecAggStage.MASKED:
            self.u3 = sorted(self.masked)
            self.stage, self.deadline = SecAggStage.REVEAL, after
        else:
            self.u4 = sorted(self.reveals)
            self.closed = True

    def _past(self, stage: SecAggStage) -> bool:
        """Whether ``stage`` has closed."""
        return self.closed or STAGES.index(self.stage) > STAGES.index(stage)

    def _require_stage(self, stage: SecAggStage, client_id: str, members: Sequence[str]) -> None:
        """409 unless ``stage`` is open and ``client_id`` took part in the one before."""
        if self.stage is not stage or self.closed:
            where = "closed" if self.closed else f"in its {self.stage.value} stage"
            raise WrongRound(
                f"round {self.number} is {where}, not collecting {stage.value}",
                current_round=self.number,
                stage=self.stage.value,
            )
        if client_id not in members:
            raise WrongRound(
                f"client {client_id!r} is not in the {stage.value} stage of round {self.number} "
                "(it missed an earlier stage): wait for the next round",
                current_round=self.number,
                stage=self.stage.value,
            )

    def _answer_after(
        self, stage: SecAggStage, client_id: str, waiting: Sequence[str], members: Sequence[str]
    ) -> bool:
        """True if the input that follows ``stage`` is ready for ``client_id``; False: not
        yet (it is in ``waiting``, the stage's members); 409 if it has no part in it."""
        if self._past(stage):
            if client_id in members:
                return True
        elif self.stage is stage and client_id in waiting:
            return False
        raise WrongRound(
            f"client {client_id!r} has no part in the {stage.value} stage of round "
            f"{self.number} (now in its {self.stage.value} stage): wait for the next round",
            current_round=self.number,
            stage=self.stage.value,
        )

    # ------------------------------------------------------------------ ahead

    @classmethod
    def ahead_of(
        cls,
        previous: SecureRound,
        announced: Mapping[str, tuple[bytes, bytes]],
        now: float,
    ) -> SecureRound | None:
        """The next round's key stage, closed now with the keys ``previous``'s survivors
        announced in their masked inputs, so that its shares travel in ``previous``'s
        reveals; None unless every survivor announced and the roster makes a graph."""
        survivors = previous.u3
        if len(survivors) < MIN_CLIENTS or any(c not in announced for c in survivors):
            return None
        ahead = cls(
            previous.number + 1,
            previous.params,
            previous.weighting,
            previous.layout,
            opened=now,
            round_timeout=previous.round_timeout,
            arrays=previous._arrays,
        )
        try:
            for client_id in survivors:
                ahead.add_keys(client_id, *announced[client_id], survivors)
            ahead.close_stage(now)
        except (BadRequest, Conflict, WrongRound, SecureRoundFailed):
            return None
        ahead.announced = set(ahead.roster)
        return ahead

    def open_ahead(self, now: float, sampled: Sequence[str], quorum: int) -> bool:
        """Open this round made by ``ahead_of`` as the one it was made for: its share stage
        closes now with the shares the previous round's reveals brought. False (nothing
        changed) unless the round samples the roster, but for clients that sent no shares
        (lost in the previous round's reveal stage: dropped at this one's shares), and
        at least ``quorum`` sent shares."""
        if self.stage is not SecAggStage.SHARES:
            return False
        chosen, roster = set(sampled), set(self.roster)
        if not chosen <= roster or (roster - chosen) & self.shared:
            return False
        if len(self.shared) < max(quorum, MIN_CLIENTS):
            return False
        self.opened, self.ahead = now, True
        self.close_stage(now)
        return True

    # ------------------------------------------------------------------- keys

    def add_keys(
        self, client_id: str, encryption_key: bytes, masking_key: bytes, sampled: Sequence[str]
    ) -> None:
        """Record a sampled client's two public keys for this round (the same again: no
        change)."""
        if client_id not in sampled:
            raise WrongRound(
                f"client {client_id!r} was not sampled to train in round {self.number}",
                current_round=self.number,
            )
        if self.stage is not SecAggStage.KEYS:
            raise WrongRound(
                f"the key stage of round {self.number} is over (now {self.stage.value}): "
                "wait for the next round",
                current_round=self.number,
                stage=self.stage.value,
            )
        pair = (encryption_key, masking_key)
        first = self.keys.get(client_id)
        if first is not None and first != pair:
            raise Conflict(f"client {client_id!r} sent other keys for round {self.number} already")
        used = {key for other, keys_ in self.keys.items() if other != client_id for key in keys_}
        if encryption_key == masking_key or used & set(pair):
            # Clients refuse a roster with a key twice: one client must not spoil the round.
            raise BadRequest(
                f"round {self.number}'s public keys must be fresh: {client_id!r} sent one "
                "twice, or one another client sent"
            )
        self.keys[client_id] = pair

    def adopt_announced(
        self, announced: Mapping[str, tuple[bytes, bytes]], sampled: Sequence[str]
    ) -> list[str]:
        """Take the keys sampled clients announced for this round in the previous one's
        reveals, checked as ``add_keys`` checks keys sent now; who was taken. A client
        not sampled, or whose announced keys are refused, sends keys as usual."""
        taken = []
        for client_id in sampled:
            pair = announced.get(client_id)
            if pair is None:
                continue
            try:
                self.add_keys(client_id, *pair, sampled)
            except (BadRequest, Conflict, WrongRound):
                continue
            self.announced.add(client_id)
            taken.append(client_id)
        return taken

    def roster_answer(self, client_id: str, sampled: Sequence[str]) -> dict[str, Any] | None:
        """The roster and the graph's k and t; None while the key stage is open."""
        if not self._answer_after(SecAggStage.KEYS, client_id, sampled, self.roster):
            return None
        assert self.graph is not None
        if self._roster_entries is None:  # the same for every client: encoded once
            self._roster_entries = [
                {
                    "client_id": c,
                    "encryption_key": messages.encode(self.keys[c][0]),
                    "masking_key": messages.encode(self.keys[c][1]),
                }
                for c in self.roster
            ]
        return {
            "round": self.number,
            "stage": SecAggStage.SHARES.value,
            "roster": self._roster_entries,
            "neighbours": self.graph.k,
            "threshold": self.graph.t,
        }

    # ----------------------------------------------------------------- shares

    def add_shares(self, client_id: str, ciphertexts: Mapping[str, bytes]) -> None:
        """Route a client's ciphertexts to its neighbours (exactly those, each of the right
        size; the same again: no change)."""
        self._require_stage(SecAggStage.SHARES, client_id, self.roster)
        expected = self.neighbours[client_id]
        if sorted(ciphertexts) != expected:
            raise BadRequest(
                f"shares must go to exactly the neighbours of {client_id!r} in round "
                f"{self.number}: {expected}, got {sorted(ciphertexts)[:10]}"
            )
        wrong = [r for r, c in ciphertexts.items() if len(c) != keys.CIPHERTEXT_BYTES]
        if wrong:
            raise BadRequest(
                f"ciphertexts must be {keys.CIPHERTEXT_BYTES} bytes; those for {wrong[:5]} are not"
            )
        if client_id in self.shared:
            if any(self.inboxes[r][client_id] != c for r, c in ciphertexts.items()):
                raise Conflict(
                    f"client {client_id!r} sent other shares for round {self.number} already"
                )
            return
        for receiver, ciphertext in ciphertexts.items():
            self.inboxes.setdefault(receiver, {})[client_id] = ciphertext
        self.shared.add(client_id)

    def inbox_answer(self, client_id: str) -> dict[str, Any] | None:
        """The ciphertexts addressed to a client of U2; None while the share stage is open."""
        if not self._answer_after(SecAggStage.SHARES, client_id, self.roster, self.u2):
            return None
        inbox = self.inboxes.get(client_id, {})
        return {
            "round": self.number,
            "stage": SecAggStage.MASKED.value,
            # Only senders in U2: every sender is, as the stage closed with them.
            "shares": {sender: messages.encode(inbox[sender]) for sender in sorted(inbox)},
        }

    # ----------------------------------------------------------------- masked

    def check_masked_head(self, client_id: str) -> None:
        """409 unless the masked stage is open to this client (or counted it already)."""
        if client_id not in self.masked:
            self._require_stage(SecAggStage.MASKED, client_id, self.u2)

    def add_masked(self, client_id: str, digest: bytes) -> bool:
        """Reserve a client's fold: True if it is new (fold it, then ``folded``), False
        for a resend of the input counted (409 if the bytes differ)."""
        first = self.masked.get(client_id)
        if first is not None:
            if first != digest:
                raise Conflict(
                    f"client {client_id!r} sent another masked input for round {self.number} "
                    "already (a resend must repeat it exactly)"
                )
            return False
        self._require_stage(SecAggStage.MASKED, client_id, self.u2)
        if client_id in self.folding:
            raise Conflict(f"client {client_id!r} has a masked input being folded already")
        self.folding.add(client_id)
        return True

    def check_masked(self, tensors: Weights) -> np.ndarray:
        """The masked vector of a decoded body; 422 for a wrong name, dtype or length."""
        dtype, size = self.quantiser.dtype, self.layout.size
        if set(tensors) != {SECAGG_MASKED_TENSOR}:
            raise InvalidUpdate(
                f"a masked input holds one tensor {SECAGG_MASKED_TENSOR!r}, "
                f"got {sorted(tensors)[:5]}"
            )
        vector = tensors[SECAGG_MASKED_TENSOR]
        if vector.dtype != dtype or vector.shape != (size,):
            raise InvalidUpdate(
                f"masked input is {vector.dtype.name}{list(vector.shape)}; this round "
                f"needs {np.dtype(dtype).name}[{size}]",
                tensor=SECAGG_MASKED_TENSOR,
            )
        return vector

    def fold(self, vector: np.ndarray) -> None:
        """Add a checked masked vector to the running sum (outside the Federation's lock)."""
        assert self.sum is not None
        self.sum.add(vector)

    def folded(self, client_id: str, digest: bytes | None) -> None:
        """End a fold ``add_masked`` reserved: counted with its digest, or (None) dropped."""
        self.folding.discard(client_id)
        if digest is not None:
            self.masked[client_id] = digest

    def unmask_answer(self, client_id: str) -> dict[str, Any] | None:
        """Who survived and who dropped, for a survivor; None while the masked stage is open."""
        if not self._answer_after(SecAggStage.MASKED, client_id, self.u2, self.u3):
            return None
        return {
            "round": self.number,
            "stage": SecAggStage.REVEAL.value,
            "survivors": self.u3,
            "dropped": self.dropped_at_masked(),
        }

    def dropped_at_masked(self) -> list[str]:
        """U2 minus U3: the clients whose masks the survivors help remove."""
        survivors = set(self.u3)
        return [c for c in self.u2 if c not in survivors]

    # ----------------------------------------------------------------- reveal

    def add_reveal(
        self,
        client_id: str,
        self_mask_shares: Mapping[str, bytes],
        mask_key_shares: Mapping[str, bytes],
    ) -> None:
        """Record a survivor's shares: of self masks for surviving neighbours, of masking
        keys for dropped ones (400 for any other peer, or one named in both)."""
        self._require_stage(SecAggStage.REVEAL, client_id, self.u3)
        both = sorted(set(self_mask_shares) & set(mask_key_shares))
        if both:
            raise BadRequest(f"a reveal names {both[:5]} in both lists: never both shares of one")
        mine = set(self.neighbours[client_id]) & set(self.inboxes.get(client_id, {}))
        survivors = set(self.u3)
        for name, shares, allowed in (
            ("self_mask_shares", self_mask_shares, mine & survivors),
            ("mask_key_shares", mask_key_shares, mine - survivors),
        ):
            stray = sorted(set(shares) - allowed)
            if stray:
                raise BadRequest(
                    f"{name} may name only the neighbours of {client_id!r} that "
                    f"{'survived' if name == 'self_mask_shares' else 'dropped'} "
                    f"({sorted(allowed)[:10]}); got {stray[:5]}"
                )
            short = sorted(p for p, s in shares.items() if len(s) != shamir.SHARE_BYTES)
            if short:
                raise BadRequest(f"{name}: shares must be {shamir.SHARE_BYTES} bytes: {short[:5]}")
        pair = (dict(self_mask_shares), dict(mask_key_shares))
        first = self.reveals.setdefault(client_id, pair)
        if first is pair:
            self._self_mask_held.update(list(self_mask_shares))
        elif first != pair:
            raise Conflict(f"client {client_id!r} revealed other shares in round {self.number}")

    def claim_self_masks(self, client_id: str) -> dict[str, bytes]:
        """The self-mask seeds ``client_id``'s reveal completes (t shares in) that are not
        out of the sum or being taken out: reserved for ``remove_self_masks`` (under
        the lock). A seed whose shares do not agree is left to ``unmask``, which fails
        the round with the reason."""
        if self.stage is not SecAggStage.REVEAL or self.closed or self.graph is None:
            return {}
        position = {c: i + 1 for i, c in enumerate(self.roster)}
        claimed: dict[str, bytes] = {}
        for owner in self.reveals[client_id][0]:
            if (
                owner in self.unmasked
                or owner in self.unmasking
                or self._self_mask_held[owner] < self.graph.t
            ):
                continue
            try:
                claimed[owner] = self._rebuild(owner, 0, position, self.graph.t, "self-mask seed")
            except SecureRoundFailed:
                continue
        self.unmasking.update(claimed)
        return claimed

    def remove_self_masks(self, claimed: Mapping[str, bytes]) -> None:
        """Take ``claim_self_masks``'s seeds' masks out of the sum (outside the lock)."""
        assert self.sum is not None
        self.sum.apply_masks([(seed, -1) for seed in claimed.values()])

    def self_masks_removed(self, claimed: Mapping[str, bytes], done: bool) -> None:
        """End a removal ``claim_self_masks`` reserved (under the lock); not ``done``: the
        sum is spoiled and the unmask fails."""
        for owner in claimed:
            del self.unmasking[owner]
        if done:
            self.unmasked.update(claimed)
        else:
            self.spoiled = f"taking out the self masks of {sorted(claimed)} failed"

    # ----------------------------------------------------------------- unmask

    def unmask(self, base: Weights, out: Weights | None = None) -> tuple[Weights, int]:
        """The survivors' weighted mean model and its total weight (outside the lock).

        Rebuilds each survivor's self-mask seed and each dropped client's masking key
        from the reveals (``t`` shares each, the rest checked to agree), removes their
        masks from the sum in place (one pass, on both halves of the sum at once:
        ``ModularSum.apply_masks``; self masks the reveal stage took out already are
        checked against the seed rebuilt from all shares), and decodes it.

        Args:
            base: The round's global model as the clients decoded it from its message.
            out: Tensors the model may be written into (``Layout.apply``'s ``out``: the
                next model's message), or None.

        Raises:
            SecureRoundFailed: a secret with too few (or inconsistent) shares, a masking
                key that does not match its public key, or a total weight over max_weight.
        """
        assert self.closed and self.sum is not None and self.graph is not None
        assert not self.unmasking
        if self.spoiled is not None:
            raise SecureRoundFailed(f"round {self.number}: {self.spoiled}")
        started = time.monotonic()
        vector, t = self.sum.vector, self.graph.t
        position = {c: i + 1 for i, c in enumerate(self.roster)}
        # Every mask still to remove, then removed in one pass over the sum.
        streams: list[tuple[bytes, int]] = []
        for client_id in self.u3:
            seed = self._rebuild(client_id, 0, position, t, "self-mask seed")
            if client_id not in self.unmasked:
                streams.append((seed, -1))
            elif self.unmasked[client_id] != seed:
                raise SecureRoundFailed(
                    f"round {self.number}: the self-mask seed of client {client_id!r} taken "
                    "out early differs from the one all its shares give (a wrong share)"
                )
        for dropped in self.dropped_at_masked():
            survivors = [peer for peer in self.neighbours[dropped] if peer in self.masked]
            if not survivors:
                continue  # no survivor added a pair mask with it: nothing to remove
            private = self._rebuild(dropped, 1, position, t, "masking key")
            if keys.public_of(private) != self.keys[dropped][1]:
                raise SecureRoundFailed(
                    f"round {self.number}: the masking key rebuilt for dropped client "
                    f"{dropped!r} does not match its public key (a wrong share)"
                )
            for peer in survivors:
                # The survivor added +PRG if its id sorts first, -PRG otherwise.
                sign = 1 if peer < dropped else -1
                streams.append((keys.pair_seed(private, self.keys[peer][1], self.number), -sign))
        self.sum.apply_masks(streams)
        try:
            levels, scale, total = self.quantiser.unpack(vector)
        except WeightError as exc:
            raise SecureRoundFailed(f"round {self.number}: {exc}") from None
        self.total_weight = total
        model = self.layout.apply(base, levels, scale, out=out)
        self.unmask_s = time.monotonic() - started
        return model, total

    def _rebuild(
        self, owner: str, kind: int, position: Mapping[str, int], t: int, what: str
    ) -> bytes:
        """``owner``'s secret (kind 0: self-mask seed, 1: masking key) from the reveals."""
        shares = {
            position[holder]: reveal[kind][owner]
            for holder, reveal in self.reveals.items()
            if owner in reveal[kind]
        }
        if len(shares) < t:
            raise SecureRoundFailed(
                f"round {self.number}: too many drop-outs: the {what} of client {owner!r} "
                f"needs {t} shares (the threshold), {len(shares)} arrived"
            )
        try:
            return shamir.combine(shares, t)
        except shamir.ShareError as exc:
            raise SecureRoundFailed(
                f"round {self.number}: the shares of client {owner!r}'s {what} do not agree "
                f"(a client revealed a wrong share): {exc}"
            ) from None

    # ----------------------------------------------------------------- report

    def report(self) -> dict[str, Any]:
        """The round's ``secure_aggregation`` record in history.json."""
        u2, u4 = set(self.u2), set(self.u4)
        quantiser = self.quantiser
        return {
            "neighbours": self.graph.k if self.graph else None,
            "threshold": self.graph.t if self.graph else None,
            "roster": len(self.roster),
            "keys_announced": len(self.announced),
            "shares_ahead": self.ahead,
            "survivors": len(self.u3),
            "revealed": len(self.u4),
            "dropped_at_shares": [c for c in self.roster if c not in u2],
            "dropped_at_masked": self.dropped_at_masked(),
            "dropped_at_reveal": [c for c in self.u3 if c not in u4],
            "bits": self.params.bits,
            "range": self.params.range,
            "max_weight": self.params.max_weight,
            "step": quantiser.step,
            "error_bound": quantiser.error_bound,
            "weighting": self.weighting,
            "total_weight": self.total_weight,
            "unmask_s": self.unmask_s,
        }
