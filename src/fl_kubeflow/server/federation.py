"""The state of one federated run, and the thread that drives it.

A run moves waiting -> fit(1) -> aggregating -> fit(2) -> ... -> finished (or
failed). HTTP handlers call the public methods; ``run`` owns the timeouts. All
state sits behind one lock and its condition variable, so a long-polling client
wakes the moment a round opens, and nobody sleeps in a loop; model long-polls wait
on a condition of their own on that lock, woken only when their answer may have
changed (model_waits.py).

What the state is made of lives next door, without locks of its own: the
clients (clients.py), round records (records.py), the global model and its
message (global_model.py), evaluations (evaluations.py); updates are checked by
updates.py before the lock is taken, and status, history and checkpoints are
made from the state by history.py and checkpoint_state.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fl_kubeflow import protocol, strategies, wire
from fl_kubeflow.protocol import Phase, SecAggStage
from fl_kubeflow.recycling import Recycler
from fl_kubeflow.secagg.vector import Layout
from fl_kubeflow.server import checkpoint, checkpoint_state, history, updates
from fl_kubeflow.server.clients import Clients
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.errors import (
    BadRequest,
    Conflict,
    InvalidUpdate,
    RequestError,
    Revoked,
    RunFailed,
    TooLarge,
    UnknownClient,
    WrongRound,
)
from fl_kubeflow.server.evaluations import Evaluations
from fl_kubeflow.server.global_model import GlobalModel
from fl_kubeflow.server.model_waits import ANY_CHANGE, ModelWaits, NotifyingCondition
from fl_kubeflow.server.records import (
    ClientRecord,
    Counters,
    RoundRecord,
    check_client_id,
    now_iso,
    summarise_ids,
)
from fl_kubeflow.server.secure_round import SecureRound, SecureRoundFailed
from fl_kubeflow.strategies import Strategy
from fl_kubeflow.wire import Weights

log = logging.getLogger("fl_kubeflow.server")

_T = TypeVar("_T")
# After a run's end, how often the driver counts the clients still to hear it.
END_CHECK_S = 0.05
# A secure round's model answer carries the roster (in X-FL-Config) when it is fixed and
# at most this long; a longer one the client GETs (a header of it would pass HTTP limits).
ROSTER_IN_ANSWER_CLIENTS = 128


@dataclass
class ModelAnswer:
    """A global model handed to a client: for training (fit) or the final one (finished)."""

    phase: Phase
    server_round: int
    body: wire.Buffer
    config: dict[str, Any]


@dataclass(frozen=True)
class RunMetrics:
    """The run's gauges and counters at one moment, for /metrics (server/prometheus_text.py)."""

    phase: Phase
    round: int
    completed_rounds: int
    clients_joined: int
    clients_active: int
    counters: Counters


class Federation:
    """One run: clients, rounds, the global model and its history."""

    def __init__(
        self,
        config: ServerConfig,
        strategy: Strategy,
        initial_weights: Weights | None = None,
        resume: checkpoint.Checkpoint | None = None,
    ) -> None:
        self.config = config
        self.strategy = strategy
        lock = threading.RLock()
        # Model long-polls and secure stages' long-polls wait apart, each woken only when
        # its answer may have changed (server/model_waits.py); every other wait is on _cond.
        self._model_waits = ModelWaits(lock, self._model_epoch)
        self._stage_waits = ModelWaits(lock, self._stage_epoch)
        self._cond = NotifyingCondition(lock, self._epochs_may_have_changed)
        self._phase = Phase.WAITING
        self._round = 0
        self._clients = Clients(config)
        self._model = GlobalModel(config.wire_dtype)
        # The secure rounds' running sums: one round's memory is the next one's (a round
        # drops its sum before the next makes one).
        self._secure_sums = Recycler(per_kind=1)
        self._current: RoundRecord | None = None
        # The round being aggregated and saved: closed, not yet in _rounds.
        self._closing: RoundRecord | None = None
        self._rounds: list[RoundRecord] = []
        self._evals = Evaluations()
        self._error: str | None = None
        self._started_at = now_iso()
        self._finished_at: str | None = None
        self._join_deadline = time.monotonic() + config.join_timeout
        self._end_deadline = 0.0
        self._next_end_check = 0.0
        self._final_eval_sampled: set[str] = set()
        self._counters = Counters()
        # Client ids revoked during the run, joined or not: refused from then on.
        self._revoked: set[str] = set()
        # Secure runs: public keys clients announced (in their masked inputs or reveals)
        # for the round after (client -> (encryption key, masking key)), and that round's
        # number; and that round made from them, its shares collected in this round's
        # reveals (SecureRound.ahead_of), until it opens.
        self._announced: dict[str, tuple[bytes, bytes]] = {}
        self._announced_round = 0
        self._ahead: SecureRound | None = None
        if config.secure_aggregation is not None:
            # Refused at start, not in round 1: a rule that needs every update, or a
            # federation the options cannot serve (ValueError saying why).
            strategies.check_secure(
                strategy, config.secure_aggregation, config.num_clients, config.quorum
            )
        if resume is not None:
            self._restore(resume)
        elif initial_weights is not None:
            self._model.start(updates.validated_initial(initial_weights))

    # ----------------------------------------------------------------- clients

    def join(self, client_id: str) -> dict[str, Any]:
        """Admit a client (or re-admit one that restarted)."""
        check_client_id(client_id)
        with self._cond:
            self._raise_if_revoked(client_id)
            self._raise_if_failed()
            if self._phase is Phase.FINISHED:
                raise Conflict("the run has finished; no more clients may join")
            if self._clients.admit(client_id):
                self._cond.notify_all()
            return {
                "client_id": client_id,
                "num_rounds": self.config.num_rounds,
                "round": self._round,
                "phase": self._phase.value,
                "propose_initial": self._model.weights is None,
            }

    def leave(self, client_id: str) -> None:
        """A client says it is done (after its final evaluation)."""
        self.leave_all([client_id])

    def leave_all(self, client_ids: Sequence[str]) -> None:
        """Several clients leave at once (a simulation worker's clients), all or none.

        Every id is checked before any leaves: one that has not joined (or was revoked)
        refuses the whole request, which then changed nothing. One wake-up of the driver
        for all of them.
        """
        with self._cond:
            clients = [self._require_client(client_id) for client_id in client_ids]
            for client in clients:
                client.left, client.active = True, False
            self._cond.notify_all()

    def revoke(self, client_id: str) -> None:
        """A client's credential was revoked: it takes no further part, as after a leave.

        What it sent before stays: an update already accepted (or being folded) for
        the open round counts, evaluations stay recorded. The round no longer waits
        for it and closes once the other sampled clients report, with quorum. Its
        later requests are refused with ``revoked``.
        """
        with self._cond:
            self._revoked.add(client_id)
            client = self._clients.get(client_id)
            if client is not None:
                client.left, client.active, client.revoked = True, False, True
            log.warning("client %s revoked: refused from now on, dropped from the run", client_id)
            self._cond.notify_all()

    def propose_initial(self, client_id: str, body: wire.Buffer) -> bool:
        """First proposal wins; later ones are checked as the first was, then ignored.

        A proposal that lost the race is answered False only if it could have started
        the run: junk is refused whenever it comes, as the error table says.
        """
        with self._cond:
            self._raise_if_failed()
            self._require_client(client_id)
        weights = updates.validated_initial(self._decode(body))
        with self._cond:
            if self._model.weights is not None:
                return False
            self._model.start(weights)
            log.info(
                "initial model from client %s: %d tensors, %d parameters",
                client_id,
                len(weights),
                sum(a.size for a in weights.values()),
            )
            self._cond.notify_all()
            return True

    # ------------------------------------------------------------------ models

    def wait_for_model(self, client_id: str, server_round: int, wait: float) -> ModelAnswer | None:
        """The global model for ``server_round`` or later; None if none opened within ``wait``."""
        return self._long_poll(lambda: self._try_model(client_id, server_round), server_round, wait)

    def _long_poll(
        self, answer: Callable[[], _T | None], server_round: int, wait: float
    ) -> _T | None:
        """``answer()`` (under the lock) as soon as it is not None, for at most ``wait``
        seconds (and ``poll_timeout``); None after that."""
        if server_round < 1:
            raise BadRequest(f"round must be at least 1, got {server_round}")
        deadline = time.monotonic() + max(0.0, min(wait, self.config.poll_timeout))
        with self._cond:
            while True:
                found = answer()
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._model_waits.wait(remaining)

    def watch_models(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever a waiting model answer may have changed (under the
        lock: it must only take note). Long-polls parked outside a thread
        (server/parking.py) are asked again then."""
        self._model_waits.listen(listener)

    def _model_epoch(self) -> Hashable | None:
        """What every waiting client's model answer depends on besides its own requests
        (under the lock): a model long-poll is woken only when this changes.

        A subclass with its own ``_try_model`` must give its own epoch (for example a
        free concurrency slot); until it does, every change wakes the waiters.
        """
        if type(self)._try_model is not Federation._try_model:
            return ANY_CHANGE
        return (self._phase, self._round, len(self._revoked))

    def _stage_epoch(self) -> Hashable:
        """What a secure stage's long-poll answer (roster, inbox, unmask request) depends
        on besides its own requests (under the lock): the run's phase and round,
        revocations, and the open round's stage. Without it, each of a stage's N
        messages woke the N clients waiting for the stage's end (N squared wake-ups)."""
        current = self._current
        secure = None if current is None else current.secure
        stage = None if secure is None else (secure.stage, secure.closed)
        return (self._phase, self._round, len(self._revoked), stage)

    def _epochs_may_have_changed(self) -> None:
        """Every notify_all of _cond (under the lock): wake the waits apart whose epoch changed."""
        self._model_waits.changed()
        self._stage_waits.changed()

    def wait_sampled(self, server_round: int, wait: float) -> dict[str, Any] | None:
        """Who round ``server_round`` (or a later one) asks to train, once it is open; at the
        end, who is asked to evaluate the final model. None if neither within ``wait``.

        One long-poll for many clients: a process hosting thousands of virtual clients
        learns which of them to run without a waiting request per client. It reads, and
        changes nothing; the clients it names fetch their model as ever.
        """
        return self._long_poll(lambda: self._sampled_now(server_round), server_round, wait)

    def _sampled_now(self, server_round: int) -> dict[str, Any] | None:
        """``wait_sampled``'s answer if there is one now (under the lock)."""
        self._raise_if_failed()
        if self._phase is Phase.FINISHED:
            return {
                "round": self._round,
                "phase": Phase.FINISHED.value,
                "fit": [],
                "evaluate": sorted(self._final_eval_sampled),
            }
        current = self._current
        if self._phase is Phase.FIT and current is not None and self._round >= server_round:
            return {
                "round": self._round,
                "phase": Phase.FIT.value,
                "fit": list(current.sampled),
                "evaluate": sorted(set(current.eval_sampled) & set(current.sampled)),
            }
        return None

    def _try_model(self, client_id: str, server_round: int) -> ModelAnswer | None:
        """The model answer for ``server_round`` or later if there is one now (under the
        lock, never waits); None: keep waiting. Raises what the long-poll answers with.

        The one rule of who gets which model: ``wait_for_model`` loops on it, and an
        asynchronous run (server/fedbuff.py) overrides it.
        """
        client = self._require_client(client_id)
        if self._phase is Phase.FAILED:
            client.told_end = True
            self._cond.notify_all()
            raise RunFailed(self._error or "the run failed")
        if self._phase is Phase.FINISHED:
            client.told_end = True
            self._cond.notify_all()
            evaluate = client_id in self._final_eval_sampled
            return self._answer(Phase.FINISHED, self._round, {"evaluate": evaluate})
        current = self._current
        if (
            current is not None
            and not current.was_sampled(client_id)
            and getattr(self.strategy, "fraction_fit", 1.0) >= 1.0
            and _keys_open(current)
        ):
            # Everyone trains in every round: a late or returning client joins the
            # open round at once instead of waiting for the next.
            current.sampled = sorted([*current.sampled, client_id])
        if not client.active and current is not None and not current.was_sampled(client_id):
            # A returning client joins the draw of the next round.
            log.info("client %s is back; waiting for round %d", client_id, self._round + 1)
            client.active = True
        if (
            self._phase is Phase.FIT
            and current is not None
            and current.was_sampled(client_id)
            and (self._round >= server_round or self._owes_update(client_id))
            # A secure round past its key stage has no place for a newcomer: the
            # roster is fixed, so the client waits for the next round.
            and _may_train(current, client_id)
        ):
            if not client.active:
                log.info("client %s is back for round %d", client_id, self._round)
                client.active = True
            config = {
                **self.strategy.configure_fit(self._round),
                "evaluate": current.was_sampled(client_id, evaluate=True),
                **self._secure_config(),
                **self._announced_config(current, client_id),
            }
            return self._answer(Phase.FIT, self._round, config)
        return None

    def _owes_update(self, client_id: str) -> bool:
        """True if the client should train the open round but has not sent its update.

        A client asks for round k+1 only after its round-k update was accepted or
        refused. If this server has no such update (it restarted from a checkpoint
        and lost the round in flight), the client gets round k again, not a wait.
        """
        current = self._current
        return current is not None and client_id not in current.contributors

    def _answer(self, phase: Phase, server_round: int, config: dict[str, Any]) -> ModelAnswer:
        body = self._model.body
        self._counters.bytes_out += len(body)
        if self._current is not None and phase is Phase.FIT:
            self._current.bytes_out += len(body)
        return ModelAnswer(phase, server_round, body, config)

    # ----------------------------------------------------------------- updates

    def submit_update(
        self,
        client_id: str,
        server_round: int,
        num_examples: int,
        metrics: dict[str, float],
        body: wire.Buffer,
        max_examples: int | None = None,
    ) -> dict[str, Any]:
        """Validate an update and fold it into the round, once per client and round.

        A resend of an update already counted is checked like the first copy and must
        be the same update (body and example count): it is then answered as a
        duplicate, else refused (409 conflict). Neither changes the round.

        Args:
            client_id: Who sends it (its X-FL-Client-Id).
            server_round: The round it was trained for (X-FL-Round).
            num_examples: The examples it was trained on: FedAvg's weight.
            metrics: Its training metrics.
            body: The safetensors body.
            max_examples: The most examples this client declared at enrolment; None:
                the server's ``max_examples`` alone.
        """
        with self._cond:
            self._require_client(client_id)
            self._check_round_open(client_id, server_round)
        try:
            self._check_examples(num_examples, max_examples)
        except BadRequest as exc:
            self._refuse(client_id, server_round, "bad_examples", exc.message)
            raise
        try:
            weights = self._decode(body)
            updates.check_signature(weights, self._model.signature, what="update")
        except (BadRequest, InvalidUpdate, TooLarge) as exc:
            self._refuse(client_id, server_round, exc.code, exc.message)
            raise
        # Outside the lock: hashing a large body takes a while and holds nobody up.
        digest = updates.digest(body)
        with self._cond:
            counted = self._check_round_open(client_id, server_round)
            if counted is not None:
                return self._answer_resend(counted, client_id, num_examples, digest)
            current = self._current
            assert current is not None and current.aggregator is not None
            current.folding.add(client_id)
        # Folded outside the lock: other updates fold alongside (on other cores, for
        # aggregators that allow it) and the rest of the server is not held up. The
        # round cannot close meanwhile: the driver waits for ``folding`` to empty.
        try:
            current.aggregator.add(weights, num_examples, client_id)
        except BaseException:
            with self._cond:
                current.folding.discard(client_id)
                self._cond.notify_all()
            raise
        with self._cond:
            current.folding.discard(client_id)
            current.contributors[client_id] = num_examples
            current.digests[client_id] = digest
            current.train.add(metrics, num_examples)
            current.bytes_in += len(body)
            self._counters.bytes_in += len(body)
            self._counters.updates_accepted += 1
            self._clients[client_id].active = True
            self._cond.notify_all()
            return {"accepted": True, "duplicate": False, "round": server_round}

    def check_before_body(
        self, client_id: str, server_round: int | None, masked: bool = False
    ) -> None:
        """Refuse on its headers a model body that submit_update, submit_masked or
        propose_initial would.

        ``server_round`` None: an initial proposal (only the client is checked);
        ``masked``: a secure round's masked input. The same errors and counts as those
        calls, but it never waits: the HTTP server's I/O thread calls it
        (server/header_check.py), before it reads the body. A resend of a counted
        update passes, to be answered by submit_update (or submit_masked).
        """
        with self._cond:
            self._require_client(client_id)
            if masked and server_round is not None:
                secure = self._secure_round(client_id, server_round)
                with self._secure_refusals(client_id, server_round):
                    secure.check_masked_head(client_id)
            elif server_round is not None:
                self._check_round_open(client_id, server_round, early=True)

    def _answer_resend(
        self, counted: RoundRecord, client_id: str, num_examples: int, digest: bytes
    ) -> dict[str, Any]:
        """A duplicate's answer if the resend is the update counted; else 409 conflict.

        A round restored from a checkpoint has no digests: its resends are compared by
        example count alone.
        """
        number = counted.number
        first = counted.digests.get(client_id, digest)
        if counted.contributors[client_id] != num_examples or first != digest:
            reason = (
                f"round {number} already counted a different update from client "
                f"{client_id!r} (a resend must repeat it exactly: same body, same "
                f"{protocol.NUM_EXAMPLES_HEADER})"
            )
            self._refuse(client_id, number, "resend_differs", reason, locked=True)
            raise Conflict(reason, round=number)
        self._counters.updates_duplicate += 1
        return {"accepted": True, "duplicate": True, "round": number}

    def _check_examples(self, num_examples: int, declared: int | None) -> None:
        """400 unless 1 <= num_examples <= the client's limit (the server's, or lower)."""
        limit = self.config.max_examples
        if declared is not None:
            limit = min(limit, declared)
        if not 1 <= num_examples <= limit:
            shown = str(num_examples) if num_examples < 10**40 else "a number over 10**40"
            raise BadRequest(
                f"num_examples must be a positive integer <= max_examples={limit}, got {shown}",
                max_examples=limit,
            )

    def _check_round_open(
        self, client_id: str, server_round: int, early: bool = False
    ) -> RoundRecord | None:
        """Raise unless ``server_round`` is collecting; the round if it counted this client.

        ``early``: from the headers, before the body (server/header_check.py): no waiting
        for a fold. What passes is counted only by the check with the body.
        """
        self._raise_if_failed()
        if self.config.secure_aggregation is not None:
            self._count_rejection("secagg_plain_update")
            raise BadRequest(
                "this run uses secure aggregation (docs/secure_aggregation.md): a round's "
                f"update goes to {protocol.SECAGG_MASKED_PATH}, masked"
            )
        current = self._current
        while not early and current is not None and current.number == server_round:
            if client_id not in current.folding:
                break
            # A resend while the first copy is being folded: answer it once the fold is
            # done (a fold takes milliseconds, not a timeout's worth).
            self._cond.wait(1.0)
        for past in [*self._rounds, self._closing, self._current]:
            if past is not None and past.number == server_round and client_id in past.contributors:
                return past
        if self._phase is Phase.FIT and server_round == self._round:
            current = self._current
            if current is not None and not current.was_sampled(client_id):
                self._count_rejection("not_sampled")
                raise WrongRound(
                    f"client {client_id!r} was not sampled to train in round {server_round}",
                    current_round=self._round,
                )
            return None
        if server_round > self._round or (
            server_round == self._round and self._phase is Phase.WAITING
        ):
            self._count_rejection("future_round")
            raise WrongRound(
                f"round {server_round} has not started; the current round is {self._round}",
                current_round=self._round,
            )
        reason = f"round {server_round} is closed; the current round is {self._round}"
        self._refuse(client_id, server_round, "stale_round", reason, locked=True)
        raise WrongRound(reason, current_round=self._round)

    def _refuse(
        self, client_id: str, server_round: int, code: str, reason: str, locked: bool = False
    ) -> None:
        if not locked:
            with self._cond:
                self._refuse(client_id, server_round, code, reason, locked=True)
            return
        self._count_rejection(code)
        for record in [*self._rounds, self._closing, self._current]:
            if record is not None and record.number == server_round:
                record.refuse(client_id, reason)
                break

    def _count_rejection(self, code: str) -> None:
        self._counters.reject(code)

    def count_rejection(self, code: str) -> None:
        """Count a request refused before it reached the run (e.g. unauthenticated)."""
        with self._cond:
            self._count_rejection(code)

    # -------------------------------------------------------------- evaluation

    def submit_evaluation(
        self,
        client_id: str,
        server_round: int,
        num_examples: int,
        metrics: dict[str, float],
        max_examples: int | None = None,
    ) -> dict[str, Any]:
        """Record a client's evaluation of the global model after ``server_round``.

        Args:
            client_id: Who evaluated.
            server_round: The round whose global model it evaluated (0: the initial one).
            num_examples: The examples it evaluated on: the weight of its metrics.
            metrics: Its evaluation metrics.
            max_examples: The most examples this client declared at enrolment; None:
                the server's ``max_examples`` alone.
        """
        self._check_examples(num_examples, max_examples)
        with self._cond:
            self._raise_if_failed()
            self._require_client(client_id)
            completed = self._round if self._phase is Phase.FINISHED else self._round - 1
            if not 0 <= server_round <= completed or self._model.weights is None:
                raise WrongRound(
                    f"round {server_round} has no global model to evaluate yet; "
                    f"rounds 0..{completed} do",
                    current_round=self._round,
                )
            if not self._evals.add(server_round, client_id, num_examples, metrics):
                return {"accepted": True, "duplicate": True, "round": server_round}
            if self._evals.seen[server_round] >= set(self._clients.active()):
                mean = self._evals.metrics[server_round].mean()
                log.info("evaluation after round %d: %s", server_round, _fmt(mean))
            self._cond.notify_all()
            return {"accepted": True, "duplicate": False, "round": server_round}

    # ------------------------------------------------- secure aggregation (SecAgg+)
    # docs/secure_aggregation.md: one transition or read each; the round's state and
    # checks are SecureRound's (server/secure_round.py).

    def submit_keys(
        self, client_id: str, server_round: int, encryption_key: bytes, masking_key: bytes
    ) -> None:
        """A sampled client's two public keys for the open round's key stage."""
        self._secure_submit(
            client_id,
            server_round,
            lambda s, sampled: s.add_keys(client_id, encryption_key, masking_key, sampled),
        )

    def wait_roster(self, client_id: str, server_round: int, wait: float) -> dict[str, Any] | None:
        """The round's roster once the key stage closed; None if not within ``wait``."""
        return self._wait_secure(
            client_id, server_round, wait, lambda s, sampled: s.roster_answer(client_id, sampled)
        )

    def submit_shares(
        self, client_id: str, server_round: int, ciphertexts: Mapping[str, bytes]
    ) -> None:
        """A roster client's encrypted shares, one per neighbour."""
        self._secure_submit(
            client_id, server_round, lambda s, _: s.add_shares(client_id, ciphertexts)
        )

    def wait_inbox(self, client_id: str, server_round: int, wait: float) -> dict[str, Any] | None:
        """The shares addressed to this client once the share stage closed; None if not yet."""
        return self._wait_secure(
            client_id, server_round, wait, lambda s, _: s.inbox_answer(client_id)
        )

    def submit_masked(
        self,
        client_id: str,
        server_round: int,
        metrics: dict[str, float],
        body: wire.Buffer,
        next_keys: tuple[bytes, bytes] | None = None,
    ) -> dict[str, Any]:
        """Check a masked input and fold it into the round's running sum, once per client;
        with ``next_keys``, the client's public keys for the next round, whose roster the
        masked stage's end then makes (shares ahead: docs/secure_aggregation.md).

        Like ``submit_update``: checked outside the lock, folded outside it alongside
        others (the stage cannot close meanwhile), a resend of the same bytes answered
        as a duplicate and of others refused (409).
        """
        with self._cond:
            secure = self._secure_round(client_id, server_round)
            with self._secure_refusals(client_id, server_round):
                secure.check_masked_head(client_id)
        try:
            vector = secure.check_masked(self._decode(body))
        except (BadRequest, InvalidUpdate, TooLarge) as exc:
            self._refuse(client_id, server_round, f"secagg_{exc.code}", exc.message)
            raise
        digest = updates.digest(body)
        answer = {"round": server_round, "stage": SecAggStage.MASKED.value, "accepted": True}
        with self._cond:
            # Checked again: the run may have failed, or the stage closed, meanwhile.
            self._secure_round(client_id, server_round)
            with self._secure_refusals(client_id, server_round):
                if next_keys is not None:
                    self._check_announced(client_id, next_keys)
                if not secure.add_masked(client_id, digest):
                    self._counters.updates_duplicate += 1
                    return {**answer, "duplicate": True}
        try:
            secure.fold(vector)
        except BaseException:
            with self._cond:
                secure.folded(client_id, None)
                self._cond.notify_all()
            raise
        with self._cond:
            secure.folded(client_id, digest)
            if next_keys is not None:
                self._announce(client_id, server_round + 1, next_keys)
            current = self._current
            assert current is not None
            # Example counts are private: the round's total is all the server learns.
            current.contributors[client_id] = None
            current.train.add(metrics, 1)
            current.bytes_in += len(body)
            self._counters.bytes_in += len(body)
            self._counters.updates_accepted += 1
            self._clients[client_id].active = True
            self._close_stage_if_done(current)
            self._cond.notify_all()
        return {**answer, "duplicate": False}

    def wait_unmask(self, client_id: str, server_round: int, wait: float) -> dict[str, Any] | None:
        """Who survived and who dropped, once the masked stage closed, with the next
        round's roster if it was made ahead; None if not yet."""
        return self._wait_secure(
            client_id,
            server_round,
            wait,
            lambda s, _: self._with_next_roster(client_id, s.unmask_answer(client_id)),
        )

    def _with_next_roster(
        self, client_id: str, answer: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """An unmask request with the next round's roster, for a client on it (under the lock)."""
        ahead = self._ahead
        if answer is None or ahead is None or client_id not in ahead.roster:
            return answer
        roster = ahead.roster_answer(client_id, ahead.roster)
        return {**answer, protocol.SECAGG_NEXT_ROSTER_FIELD: roster}

    def _shares_ahead(self, current: RoundRecord, now: float) -> SecureRound | None:
        """The next round made from the keys the survivors announced in their masked inputs
        (under the lock, as the masked stage closes), if its shares can travel in this
        round's reveals: every client trains in every round (no sampling), a next round,
        a roster short enough for the model answer's header."""
        secure = current.secure
        assert secure is not None
        if (
            getattr(self.strategy, "fraction_fit", 1.0) < 1.0
            or current.number >= self.config.num_rounds
            or len(secure.u3) > ROSTER_IN_ANSWER_CLIENTS
            or self._announced_round != current.number + 1
        ):
            return None
        return SecureRound.ahead_of(secure, self._announced, now)

    def submit_reveal(
        self,
        client_id: str,
        server_round: int,
        self_mask_shares: Mapping[str, bytes],
        mask_key_shares: Mapping[str, bytes],
        next_keys: tuple[bytes, bytes] | None = None,
        next_shares: Mapping[str, bytes] | None = None,
    ) -> None:
        """A survivor's shares that remove the masks: self masks of surviving neighbours,
        masking keys of dropped ones; and, optionally, its two public keys for the next
        round (``next_keys``: that round's key stage then needs nothing from it), or its
        encrypted shares for the next round's neighbours (``next_shares``, once the
        unmask request brought that round's roster: its share stage, ahead).

        The self masks these shares complete (t in) are taken out of the sum here,
        outside the lock, while other reveals come in: the unmask after the stage has
        that much less to do (the stage cannot close before they are out).
        """
        claims: list[tuple[SecureRound, dict[str, bytes]]] = []

        def reveal(secure: SecureRound, _: list[str]) -> None:
            if next_keys is not None:
                self._check_announced(client_id, next_keys)
            if next_shares is not None:
                ahead = self._ahead
                if ahead is None or ahead.number != server_round + 1:
                    raise WrongRound(
                        f"round {server_round + 1} was not made ahead: its shares go in its "
                        "own share stage",
                        current_round=server_round,
                    )
                # Checked (and routed: the same again is no change) before the reveal
                # counts, so a refused reveal leaves nothing of either.
                ahead.add_shares(client_id, next_shares)
            secure.add_reveal(client_id, self_mask_shares, mask_key_shares)
            if next_keys is not None:
                self._announce(client_id, server_round + 1, next_keys)
            claims.append((secure, secure.claim_self_masks(client_id)))

        self._secure_submit(client_id, server_round, reveal)
        secure, claimed = claims[0]
        if not claimed:
            return
        done = False
        try:
            secure.remove_self_masks(claimed)
            done = True
        finally:
            with self._cond:
                secure.self_masks_removed(claimed, done)
                self._cond.notify_all()

    def _check_announced(self, client_id: str, pair: tuple[bytes, bytes]) -> None:
        """400 for announced keys that cannot be fresh; 409 for others than announced."""
        if pair[0] == pair[1]:
            raise BadRequest(f"{protocol.SECAGG_NEXT_KEYS_FIELD}: the two keys must differ")
        first = self._announced.get(client_id)
        if first is not None and first != pair:
            raise Conflict(f"client {client_id!r} announced other keys for the next round")

    def _announce(self, client_id: str, server_round: int, pair: tuple[bytes, bytes]) -> None:
        """Keep a client's announced keys for round ``server_round`` (under the lock)."""
        if self._announced_round != server_round:
            self._announced, self._announced_round = {}, server_round
        self._announced[client_id] = pair

    def _adopt_announced(self, current: RoundRecord, now: float) -> None:
        """A secure round opening: the keys its sampled clients announced become theirs,
        and if every one announced, the key stage closes now (under the lock)."""
        secure = current.secure
        announced = self._announced if self._announced_round == current.number else {}
        self._announced, self._announced_round = {}, 0
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.number == current.number:
            if ahead.open_ahead(now, current.sampled, self.config.quorum):
                # Its key and share stages ran in the previous round: the clients get
                # their inbox with the model and go straight to their masked input.
                current.secure = ahead
                return
            # Its keys made shares for a roster that did not come about: fresh keys.
            announced = {c: pair for c, pair in announced.items() if c not in ahead.keys}
        if secure is None or not announced:
            return
        taken = secure.adopt_announced(announced, current.sampled)
        if len(taken) == len(current.sampled):
            # The roster is fixed before any model goes out: it travels with the model.
            self._drive_secure(current, now)

    def _announced_config(self, current: RoundRecord, client_id: str) -> dict[str, Any]:
        """The round config's word on keys a client announced (under the lock): taken,
        and the roster if it is fixed (and short enough); {} otherwise."""
        secure = current.secure
        if secure is None or client_id not in secure.announced:
            return {}
        config: dict[str, Any] = {protocol.SECAGG_ANNOUNCED_KEY: True}
        if secure.stage is not SecAggStage.KEYS and len(secure.roster) <= ROSTER_IN_ANSWER_CLIENTS:
            config[protocol.SECAGG_ROSTER_KEY] = secure.roster_answer(client_id, current.sampled)
        if secure.ahead and client_id in secure.u2:
            config[protocol.SECAGG_INBOX_KEY] = secure.inbox_answer(client_id)
        return config

    def _close_stage_if_done(self, current: RoundRecord) -> None:
        """Close a secure round's stage before the reveal once its last message is in, on
        the thread that brought it (under the lock): the clients waiting for the next
        stage's input are answered without a wake-up of the driver in between. The
        reveal stage stays the driver's: its close starts the unmask."""
        secure = current.secure
        if (
            self._phase is Phase.FIT
            and secure is not None
            and secure.stage is not SecAggStage.REVEAL
        ):
            self._drive_secure(current, time.monotonic())

    def _secure_round(self, client_id: str, server_round: int) -> SecureRound:
        """The open secure round (under the lock), if it is ``server_round``; else refused."""
        self._require_client(client_id)
        self._raise_if_failed()
        if self.config.secure_aggregation is None:
            self._count_rejection("secagg_off")
            raise BadRequest("this run does not use secure aggregation")
        current = self._current
        if (
            self._phase is not Phase.FIT
            or current is None
            or current.secure is None
            or current.number != server_round
        ):
            reason = (
                f"round {server_round} is not collecting secure-aggregation stages; the "
                f"current round is {self._round} ({self._phase.value})"
            )
            self._refuse(client_id, server_round, "secagg_wrong_round", reason, locked=True)
            raise WrongRound(reason, current_round=self._round)
        return current.secure

    @contextmanager
    def _secure_refusals(self, client_id: str, server_round: int) -> Iterator[None]:
        """Count and record (under the lock) a stage's refusal by its code, and raise it."""
        try:
            yield
        except RequestError as exc:
            self._refuse(client_id, server_round, f"secagg_{exc.code}", exc.message, locked=True)
            raise

    def _secure_submit(
        self,
        client_id: str,
        server_round: int,
        submit: Callable[[SecureRound, list[str]], None],
    ) -> None:
        """Hand a stage's submission to the open secure round (with its sampled clients)."""
        with self._cond:
            secure = self._secure_round(client_id, server_round)
            current = self._current
            assert current is not None
            with self._secure_refusals(client_id, server_round):
                submit(secure, current.sampled)
            self._close_stage_if_done(current)
            self._cond.notify_all()

    def _wait_secure(
        self,
        client_id: str,
        server_round: int,
        wait: float,
        read: Callable[[SecureRound, list[str]], dict[str, Any] | None],
    ) -> dict[str, Any] | None:
        """Long-poll (at most poll_timeout) until ``read`` gives the next stage's input."""
        deadline = time.monotonic() + max(0.0, min(wait, self.config.poll_timeout))
        with self._cond:
            while True:
                secure = self._secure_round(client_id, server_round)
                current = self._current
                assert current is not None
                with self._secure_refusals(client_id, server_round):
                    answer = read(secure, current.sampled)
                remaining = deadline - time.monotonic()
                if answer is not None or remaining <= 0:
                    return answer
                self._stage_waits.wait(remaining)

    def _secure_config(self) -> dict[str, Any]:
        """The round config's secure-aggregation entry ({} in a plain run)."""
        params = self.config.secure_aggregation
        if params is None:
            return {}
        weighting = self.strategy.secure_weighting
        return {
            protocol.SECAGG_CONFIG_KEY: {
                **params.to_config(),
                protocol.SECAGG_WEIGHTING_KEY: weighting,
            }
        }

    def _drive_secure(self, current: RoundRecord, now: float) -> str | float | None:
        """Close the secure round's open stage once done or due (under the lock).

        Returns "aggregate" when the reveal stage closed, None when a stage closed or
        the run failed (look again), else the time to wake up at.
        """
        secure = current.secure
        assert secure is not None
        stage = secure.stage
        try:
            step = secure.advance(
                now, current.sampled, lambda c: self._clients[c].active, self.config.quorum
            )
        except SecureRoundFailed as exc:
            self._fail(str(exc))
            return None
        if isinstance(step, float):
            return step
        for client_id in step:
            # Dropped out of the round: the next one does not wait for it either.
            self._clients[client_id].active = False
        if step:
            log.warning("round %d: %s stage closed without %s", current.number, stage.value, step)
        if stage is SecAggStage.KEYS:
            current.timed_out = step
        if stage is SecAggStage.MASKED:
            self._ahead = self._shares_ahead(current, now)
        self._cond.notify_all()
        return "aggregate" if secure.closed else None

    def _unmask(self, current: RoundRecord, old_global: Weights, out: Weights) -> Weights:
        """The secure round's aggregate (outside the lock): unmask (the mean written into
        ``out``, the next message's tensors, where they fit), then the strategy's
        ``secure_aggregate``."""
        secure = current.secure
        assert secure is not None
        # The base is the round's message as clients decoded it: exact to the bound
        # with half-precision wire too.
        base = wire.decode(self._model.body, wire_dtype=self.config.wire_dtype)
        mean, total = secure.unmask(base, out)
        aggregate = self.strategy.secure_aggregate(current.number, old_global, mean, len(secure.u3))
        current.secure_report = secure.report()
        current.num_examples = total if secure.weighting == protocol.SECAGG_BY_EXAMPLES else None
        return aggregate

    # ------------------------------------------------------------------ driver

    def run(self) -> bool:
        """Drive the run to its end; True if it finished, False if it failed."""
        while True:
            with self._cond:
                action = self._next_action()
            if action == "aggregate":
                self._aggregate()
                continue
            return action == "finished"

    def _next_action(self) -> str:
        """Wait (under the lock) until something must happen, and do the cheap parts here."""
        while True:
            now = time.monotonic()
            if self._phase is Phase.WAITING:
                deadline = self._join_deadline
                joined = len(self._clients)
                if self._model.weights is not None and joined >= self.config.num_clients:
                    self._open_round(self._round + 1)
                    continue
                if now >= deadline:
                    if self._model.weights is None:
                        self._fail(
                            f"no initial model within join_timeout={self.config.join_timeout:g}s:"
                            " no --initial-weights and no client proposed one"
                        )
                    elif joined >= self.config.quorum:
                        log.info(
                            "join_timeout: starting with %d of %d clients",
                            joined,
                            self.config.num_clients,
                        )
                        self._open_round(self._round + 1)
                    else:
                        missing = summarise_ids(self._clients.missing())
                        self._fail(
                            f"only {joined} of {self.config.num_clients} clients joined within "
                            f"join_timeout={self.config.join_timeout:g}s (min_clients="
                            f"{self.config.quorum}); missing: {missing}"
                        )
                    continue
            elif self._phase is Phase.FIT and _secure(self._current):
                assert self._current is not None
                step = self._drive_secure(self._current, now)
                if step == "aggregate":
                    self._phase = Phase.AGGREGATING
                    return "aggregate"
                if not isinstance(step, float):
                    continue
                deadline = step
            elif self._phase is Phase.FIT:
                current = self._current
                assert current is not None
                step = self._drive_fit(current, now)
                if step == "aggregate":
                    self._phase = Phase.AGGREGATING
                    return "aggregate"
                if not isinstance(step, float):
                    continue
                deadline = step
            elif self._phase in (Phase.FINISHED, Phase.FAILED):
                # Wait (up to the grace period) until every client has heard how the run
                # ended, stragglers included; those still working also get to send their
                # final evaluation and leave. Who is still to hear it is a walk over every
                # client: done on every wake-up (each leave wakes the driver) thousands of
                # clients leaving one by one cost O(N^2); at most every END_CHECK_S it is
                # O(N) a tick, and the run ends at most that much later.
                if now >= self._next_end_check:
                    pending = self._clients.not_told_end(failed=self._phase is Phase.FAILED)
                    if not pending or now >= self._end_deadline:
                        if pending:
                            log.warning(
                                "grace period over; not heard from: %s", summarise_ids(pending)
                            )
                        return self._phase.value
                    self._next_end_check = now + END_CHECK_S
                deadline = min(self._end_deadline, self._next_end_check)
            else:  # AGGREGATING is handled by run() outside the lock
                raise AssertionError(self._phase)
            self._cond.wait(max(0.0, deadline - now))

    def _drive_fit(self, current: RoundRecord, now: float) -> str | float | None:
        """Close a plain round once every sampled client reported, or at its timeout
        (under the lock).

        Returns "aggregate" when the round must be aggregated, None when the run failed
        (look again), else the time to wake up at. An asynchronous run overrides it.
        """
        deadline = current.started_mono + self.config.round_timeout
        if current.folding:
            # Updates being folded are in, not missing: wait for them to land.
            return now + 1.0
        if now < deadline and len(current.contributors) < self.config.quorum:
            # Nothing can close the round yet. This runs at every update: the scan below,
            # linear in the clients, made a round quadratic (benchmarks/load.md).
            return deadline
        done = set(current.contributors)
        waiting = sorted(c for c in current.sampled if self._clients[c].active and c not in done)
        if not waiting and len(done) >= self.config.quorum:
            return "aggregate"
        if now >= deadline:
            if len(done) >= self.config.quorum:
                for client_id in waiting:
                    self._clients[client_id].active = False
                current.timed_out = waiting
                log.warning(
                    "round %d: round_timeout=%gs; closing with %d clients; timed out: %s",
                    current.number,
                    self.config.round_timeout,
                    len(done),
                    summarise_ids(waiting),
                )
                return "aggregate"
            missing = sorted(set(self._clients) - done) + self._clients.missing()
            self._fail(
                f"round {current.number}: only {len(done)} of min_clients="
                f"{self.config.quorum} clients reported within round_timeout="
                f"{self.config.round_timeout:g}s; missing: {summarise_ids(missing)}"
            )
            return None
        return deadline

    def _aggregate(self) -> None:
        current = self._current
        assert current is not None
        old_global = self._model.weights
        assert old_global is not None
        frame = self._model.frame(old_global)
        if current.secure is not None:
            try:
                aggregate = self._unmask(current, old_global, frame.tensors)
            except SecureRoundFailed as exc:
                with self._cond:
                    self._fail(str(exc))
                return
        else:
            assert current.aggregator is not None
            aggregate = current.aggregator.result_into(frame.tensors)
        new_global = self.strategy.finish_round(current.number, old_global, aggregate)
        current.strategy_report = self.strategy.round_report(current.number)
        updates.check_signature(new_global, self._model.signature, what="aggregate")
        new_global, body = self._model.message(new_global, frame)
        with self._cond:
            current.duration_s = time.monotonic() - current.started_mono
            if current.aggregator is not None:
                current.num_examples = current.aggregator.total_examples
            # The round's buffers (the sum, a secure round's stages) are no longer needed.
            current.aggregator = current.secure = None
            self._closing, self._current = current, None
            self._model.replace(new_global, body)
            snapshot = self._checkpoint_state(current) if self.config.checkpoint_dir else None
        # Saved before anyone can fetch the new model or see the round as completed: a
        # client never holds a model that a restarted server would not know.
        if snapshot is not None:
            assert self.config.checkpoint_dir is not None
            checkpoint.save(self.config.checkpoint_dir, snapshot)
        with self._cond:
            self._rounds.append(current)
            self._closing = None
            log.info(
                "round %d/%d: %d clients, %s examples, train %s (%.2fs)",
                current.number,
                self.config.num_rounds,
                len(current.contributors),
                current.num_examples,
                _fmt(current.train.mean()),
                current.duration_s,
            )
            if current.number >= self.config.num_rounds:
                self._final_eval_sampled = set(
                    self.strategy.sample_evaluate(
                        current.number, self._clients.eligible(), self.config.quorum
                    )
                )
                self._phase = Phase.FINISHED
                self._finished_at = now_iso()
                self._end_deadline = time.monotonic() + self.config.grace_period
                log.info("finished %d rounds", current.number)
            else:
                self._open_round(current.number + 1)
            self._cond.notify_all()

    def _open_round(self, number: int) -> None:
        assert self._model.weights is not None
        self._round = number
        active = self._clients.active() or self._clients.eligible()
        started = time.monotonic()
        params = self.config.secure_aggregation
        self._current = RoundRecord(
            number=number,
            started_mono=started,
            started_at=now_iso(),
            # A secure round's sum is SecureRound's, not the strategy's aggregator.
            aggregator=None if params else self.strategy.start_round(number, self._model.weights),
            sampled=self.strategy.sample_fit(number, active, self.config.quorum),
            eval_sampled=self.strategy.sample_evaluate(
                number - 1, self._clients.eligible(), self.config.quorum
            ),
        )
        if params is not None:
            self._current.secure = SecureRound(
                number,
                params,
                self.strategy.secure_weighting,
                Layout.of(self._model.weights),
                opened=started,
                round_timeout=self.config.round_timeout,
                arrays=self._secure_sums,
            )
        self._phase = Phase.FIT
        self._adopt_announced(self._current, started)
        self._cond.notify_all()

    def abort(self, message: str) -> None:
        """Fail the run now, for a reason outside it (its HTTP server stopped serving):
        readiness turns 503, ``run`` returns False, the reason is the run's error."""
        with self._cond:
            if self._phase not in (Phase.FINISHED, Phase.FAILED):
                self._fail(message)
                # Nobody can hear the end any more: no grace period to wait out.
                self._end_deadline = time.monotonic()

    def _fail(self, message: str) -> None:
        log.error("run failed: %s", message)
        self._error = message
        self._phase = Phase.FAILED
        self._finished_at = now_iso()
        self._end_deadline = time.monotonic() + min(self.config.grace_period, 10.0)
        self._cond.notify_all()

    # ----------------------------------------------------------------- helpers

    def _require_client(self, client_id: str) -> ClientRecord:
        self._raise_if_revoked(client_id)
        client = self._clients.get(client_id)
        if client is None:
            self._count_rejection(protocol.UNKNOWN_CLIENT)
            raise UnknownClient(f"client {client_id!r} has not joined this run")
        return client

    def _raise_if_revoked(self, client_id: str) -> None:
        if client_id in self._revoked:
            self._count_rejection(protocol.REVOKED)
            raise Revoked(f"the credential of {client_id!r} was revoked during the run")

    def _raise_if_failed(self) -> None:
        if self._phase is Phase.FAILED:
            raise RunFailed(self._error or "the run failed")

    def _decode(self, body: wire.Buffer) -> Weights:
        return updates.decode(body, self.config.max_update_bytes, self.config.wire_dtype)

    # ------------------------------------------------------------- checkpoints

    def _checkpoint_state(self, closed: RoundRecord) -> checkpoint.Checkpoint:
        assert self._model.weights is not None
        return checkpoint_state.run_checkpoint(
            closed,
            self._rounds,
            self._model.weights,
            self.strategy.state_dict(),
            self._evals,
            self._started_at,
        )

    def _restore(self, saved: checkpoint.Checkpoint) -> None:
        self._model.start(saved.global_weights)
        self.strategy.load_state_dict(saved.strategy_state)
        run = checkpoint_state.restored_run(saved)
        self._rounds, self._evals, self._started_at = run.rounds, run.evaluations, run.started_at
        self._round = run.completed_round
        if self._round >= self.config.num_rounds:
            self._phase = Phase.FINISHED
            self._finished_at = now_iso()
            self._end_deadline = time.monotonic() + self.config.grace_period
        log.info(
            "resumed from checkpoint after round %d of %d", self._round, self.config.num_rounds
        )

    # ----------------------------------------------------------------- reading

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def error(self) -> str | None:
        return self._error

    def final_weights(self) -> Weights | None:
        with self._cond:
            return self._model.weights

    def status(self, since: int | None = None) -> dict[str, Any]:
        """A snapshot of the run; with ``since``, also the records of rounds >= since."""
        with self._cond:
            return history.status(self._view(), since)

    def history(self) -> dict[str, Any]:
        """Everything that happened, as written to history.json."""
        with self._cond:
            return history.history(self._view())

    def metrics(self) -> RunMetrics:
        """The run's gauges and counters now."""
        with self._cond:
            return RunMetrics(
                phase=self._phase,
                round=self._round,
                completed_rounds=len(self._rounds),
                clients_joined=len(self._clients),
                clients_active=sum(s.active for s in self._clients.records.values()),
                counters=self._counters.copy(),
            )

    def _view(self) -> history.RunView:
        # Records still change under the lock (refusals of closed rounds, evaluations):
        # the caller holds it while the view is read.
        return history.RunView(
            phase=self._phase,
            round=self._round,
            config=self.config,
            clients=self._clients.records,
            current=self._current,
            rounds=self._rounds,
            evaluations=self._evals.metrics,
            error=self._error,
            started_at=self._started_at,
            finished_at=self._finished_at,
            strategy=self.strategy.name,
            strategy_options=self.strategy.options(),
        )


def _secure(record: RoundRecord | None) -> bool:
    """Whether ``record`` is a secure round's."""
    return record is not None and record.secure is not None


def _keys_open(record: RoundRecord) -> bool:
    """Whether a client may still join ``record``'s round: always, unless it is secure
    and past its key stage."""
    return record.secure is None or record.secure.stage is SecAggStage.KEYS


def _may_train(record: RoundRecord, client_id: str) -> bool:
    """Whether ``client_id`` may have ``record``'s model to train: as ``_keys_open``, or
    it is on a secure round's roster by keys it announced and the shares stage is open,
    or the round's shares came ahead, this client's among them, and the masked stage is
    open."""
    secure = record.secure
    if _keys_open(record):
        return True
    assert secure is not None
    if secure.ahead:
        return secure.stage is SecAggStage.MASKED and client_id in secure.u2
    return secure.stage is SecAggStage.SHARES and client_id in secure.announced


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items()) or "-"
