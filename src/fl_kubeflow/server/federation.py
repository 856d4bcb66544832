"""The state of one federated run, and the thread that drives it.

A run moves waiting -> fit(1) -> aggregating -> fit(2) -> ... -> finished (or
failed). HTTP handlers call the public methods; ``run`` owns the timeouts. All
state sits behind one condition variable, so a long-polling client wakes the
moment a round opens, and nobody sleeps in a loop.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from fl_kubeflow import protocol, wire
from fl_kubeflow.metrics import WeightedMetrics
from fl_kubeflow.protocol import Phase
from fl_kubeflow.recycling import Recycler
from fl_kubeflow.server import checkpoint, updates
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.errors import (
    BadRequest,
    Conflict,
    InvalidUpdate,
    RunFailed,
    TooLarge,
    UnknownClient,
    WrongRound,
)
from fl_kubeflow.strategies import RoundAggregator, Strategy
from fl_kubeflow.wire import Weights

log = logging.getLogger("fl_kubeflow.server")

CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_REFUSALS_KEPT = 100


@dataclass
class ModelAnswer:
    """A global model handed to a client: for training (fit) or the final one (finished)."""

    phase: Phase
    server_round: int
    body: wire.Buffer
    config: dict[str, Any]


@dataclass
class _Client:
    joined_at: float
    active: bool = True
    left: bool = False
    told_end: bool = False


@dataclass
class _Round:
    number: int
    started_mono: float
    started_at: str
    aggregator: RoundAggregator | None
    # Who was asked to train (client sampling) and to evaluate the model before it.
    sampled: list[str] = field(default_factory=list)
    eval_sampled: list[str] = field(default_factory=list)
    train: WeightedMetrics = field(default_factory=WeightedMetrics)
    num_examples: int = 0
    strategy_report: dict[str, Any] = field(default_factory=dict)
    contributors: dict[str, int] = field(default_factory=dict)
    # Clients whose update is being folded in now (outside the lock).
    folding: set[str] = field(default_factory=set)
    refused: list[dict[str, str]] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    bytes_in: int = 0
    bytes_out: int = 0
    duration_s: float | None = None

    def to_state(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "started_at": self.started_at,
            "sampled": self.sampled,
            "strategy_report": self.strategy_report,
            "train": self.train.to_state(),
            "num_examples": self.num_examples,
            "contributors": self.contributors,
            "refused": self.refused,
            "timed_out": self.timed_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration_s": self.duration_s,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Round:
        return cls(
            number=int(state["number"]),
            started_mono=0.0,
            started_at=state["started_at"],
            aggregator=None,
            sampled=list(state.get("sampled", [])),
            strategy_report=dict(state.get("strategy_report", {})),
            train=WeightedMetrics.from_state(state["train"]),
            num_examples=int(state["num_examples"]),
            contributors=dict(state["contributors"]),
            refused=list(state["refused"]),
            timed_out=list(state["timed_out"]),
            bytes_in=int(state["bytes_in"]),
            bytes_out=int(state["bytes_out"]),
            duration_s=state["duration_s"],
        )


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _check_client_id(client_id: str) -> str:
    if not CLIENT_ID.match(client_id or ""):
        raise BadRequest(
            f"client id {client_id!r} must be 1-63 characters of letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return client_id


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
        self._cond = threading.Condition()
        self._phase = Phase.WAITING
        self._round = 0
        self._clients: dict[str, _Client] = {}
        self._global: Weights | None = None
        # The global model's message, encoded once per round and sent to every client.
        self._global_body: wire.Buffer = b""
        # Messages are model-sized and made every round: their memory is used again
        # once no request is still sending an old one (fresh pages cost page faults).
        self._bodies = Recycler()
        self._signature: updates.Signature = {}
        self._current: _Round | None = None
        # The round being aggregated and saved: closed, not yet in _rounds.
        self._closing: _Round | None = None
        self._rounds: list[_Round] = []
        self._evals: dict[int, tuple[WeightedMetrics, set[str]]] = {}
        self._error: str | None = None
        self._started_at = _now_iso()
        self._finished_at: str | None = None
        self._join_deadline = time.monotonic() + config.join_timeout
        self._end_deadline = 0.0
        self._final_eval_sampled: set[str] = set()
        self._counters: dict[str, int] = {
            "updates_accepted": 0,
            "updates_duplicate": 0,
            "bytes_in": 0,
            "bytes_out": 0,
        }
        self._rejections: dict[str, int] = {}
        if resume is not None:
            self._restore(resume)
        elif initial_weights is not None:
            self._set_global(updates.validated_initial(initial_weights), initial=True)

    # ----------------------------------------------------------------- clients

    def join(self, client_id: str) -> dict[str, Any]:
        """Admit a client (or re-admit one that restarted)."""
        _check_client_id(client_id)
        with self._cond:
            self._raise_if_failed()
            if self._phase is Phase.FINISHED:
                raise Conflict("the run has finished; no more clients may join")
            client = self._clients.get(client_id)
            if client is not None:
                if not client.active or client.left:
                    log.info("client %s rejoined", client_id)
                client.active, client.left = True, False
            else:
                allowed = self.config.client_ids
                if allowed is not None and client_id not in allowed:
                    raise UnknownClient(
                        f"client {client_id!r} is not one of this run's clients {list(allowed)}"
                    )
                if len(self._clients) >= self.config.num_clients:
                    raise Conflict(
                        f"the federation is full: {self.config.num_clients} clients joined "
                        f"already ({sorted(self._clients)})"
                    )
                self._clients[client_id] = _Client(joined_at=time.monotonic())
                log.info(
                    "client %s joined (%d/%d)",
                    client_id,
                    len(self._clients),
                    self.config.num_clients,
                )
                self._cond.notify_all()
            return {
                "client_id": client_id,
                "num_rounds": self.config.num_rounds,
                "round": self._round,
                "phase": self._phase.value,
                "propose_initial": self._global is None,
            }

    def leave(self, client_id: str) -> None:
        """A client says it is done (after its final evaluation)."""
        with self._cond:
            client = self._require_client(client_id)
            client.left, client.active = True, False
            self._cond.notify_all()

    def propose_initial(self, client_id: str, body: wire.Buffer) -> bool:
        """First proposal wins; later ones are answered but ignored."""
        with self._cond:
            self._require_client(client_id)
            if self._global is not None:
                return False
        weights = updates.validated_initial(self._decode(body))
        with self._cond:
            if self._global is not None:
                return False
            self._set_global(weights, initial=True)
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
        if server_round < 1:
            raise BadRequest(f"round must be at least 1, got {server_round}")
        deadline = time.monotonic() + max(0.0, min(wait, self.config.poll_timeout))
        with self._cond:
            client = self._require_client(client_id)
            while True:
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
                    and client_id not in current.sampled
                    and getattr(self.strategy, "fraction_fit", 1.0) >= 1.0
                ):
                    # Everyone trains in every round: a late or returning client joins the
                    # open round at once instead of waiting for the next.
                    current.sampled = sorted([*current.sampled, client_id])
                if not client.active and current is not None and client_id not in current.sampled:
                    # A returning client joins the draw of the next round.
                    log.info("client %s is back; waiting for round %d", client_id, self._round + 1)
                    client.active = True
                if (
                    self._phase is Phase.FIT
                    and current is not None
                    and client_id in current.sampled
                    and (self._round >= server_round or self._owes_update(client_id))
                ):
                    if not client.active:
                        log.info("client %s is back for round %d", client_id, self._round)
                        client.active = True
                    config = {
                        **self.strategy.configure_fit(self._round),
                        "evaluate": client_id in current.eval_sampled,
                    }
                    return self._answer(Phase.FIT, self._round, config)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def _owes_update(self, client_id: str) -> bool:
        """True if the client should train the open round but has not sent its update.

        A client asks for round k+1 only after its round-k update was accepted or
        refused. If this server has no such update (it restarted from a checkpoint
        and lost the round in flight), the client gets round k again, not a wait.
        """
        current = self._current
        return current is not None and client_id not in current.contributors

    def _answer(self, phase: Phase, server_round: int, config: dict[str, Any]) -> ModelAnswer:
        size = len(self._global_body)
        self._counters["bytes_out"] += size
        if self._current is not None and phase is Phase.FIT:
            self._current.bytes_out += size
        return ModelAnswer(phase, server_round, self._global_body, config)

    # ----------------------------------------------------------------- updates

    def submit_update(
        self,
        client_id: str,
        server_round: int,
        num_examples: int,
        metrics: dict[str, float],
        body: wire.Buffer,
    ) -> dict[str, Any]:
        """Validate an update and fold it into the round, once per client and round."""
        with self._cond:
            self._require_client(client_id)
            duplicate = self._check_round_open(client_id, server_round)
            if duplicate:
                return duplicate
        if num_examples < 1:
            self._refuse(client_id, server_round, "bad_examples", "num_examples < 1")
            raise BadRequest(f"num_examples must be a positive integer, got {num_examples}")
        try:
            weights = self._decode(body)
            updates.check_signature(weights, self._signature, what="update")
        except (BadRequest, InvalidUpdate, TooLarge) as exc:
            self._refuse(client_id, server_round, exc.code, exc.message)
            raise
        with self._cond:
            duplicate = self._check_round_open(client_id, server_round)
            if duplicate:
                return duplicate
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
            current.train.add(metrics, num_examples)
            current.bytes_in += len(body)
            self._counters["bytes_in"] += len(body)
            self._counters["updates_accepted"] += 1
            self._clients[client_id].active = True
            self._cond.notify_all()
            return {"accepted": True, "duplicate": False, "round": server_round}

    def _check_round_open(self, client_id: str, server_round: int) -> dict[str, Any] | None:
        """Raise unless ``server_round`` is collecting; a resend gets the first answer back."""
        self._raise_if_failed()
        current = self._current
        while current is not None and current.number == server_round:
            if client_id not in current.folding:
                break
            # A resend while the first copy is being folded: answer it as a duplicate
            # once the fold is done (a fold takes milliseconds, not a timeout's worth).
            self._cond.wait(1.0)
        for past in [*self._rounds, self._closing, self._current]:
            if past is not None and past.number == server_round and client_id in past.contributors:
                self._counters["updates_duplicate"] += 1
                return {"accepted": True, "duplicate": True, "round": server_round}
        if self._phase is Phase.FIT and server_round == self._round:
            current = self._current
            if current is not None and client_id not in current.sampled:
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
                if len(record.refused) < MAX_REFUSALS_KEPT:
                    record.refused.append({"client": client_id, "reason": reason})
                break

    def _count_rejection(self, code: str) -> None:
        self._rejections[code] = self._rejections.get(code, 0) + 1

    def count_rejection(self, code: str) -> None:
        """Count a request refused before it reached the run (e.g. unauthenticated)."""
        with self._cond:
            self._count_rejection(code)

    # -------------------------------------------------------------- evaluation

    def submit_evaluation(
        self, client_id: str, server_round: int, num_examples: int, metrics: dict[str, float]
    ) -> dict[str, Any]:
        """Record a client's evaluation of the global model after ``server_round``."""
        if num_examples < 1:
            raise BadRequest(f"num_examples must be a positive integer, got {num_examples}")
        with self._cond:
            self._require_client(client_id)
            completed = self._round if self._phase is Phase.FINISHED else self._round - 1
            if not 0 <= server_round <= completed or self._global is None:
                raise WrongRound(
                    f"round {server_round} has no global model to evaluate yet; "
                    f"rounds 0..{completed} do",
                    current_round=self._round,
                )
            agg, seen = self._evals.setdefault(server_round, (WeightedMetrics(), set()))
            if client_id in seen:
                return {"accepted": True, "duplicate": True, "round": server_round}
            seen.add(client_id)
            agg.add(metrics, num_examples)
            if seen >= {c for c, s in self._clients.items() if s.active}:
                log.info("evaluation after round %d: %s", server_round, _fmt(agg.mean()))
            self._cond.notify_all()
            return {"accepted": True, "duplicate": False, "round": server_round}

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
                if self._global is not None and joined >= self.config.num_clients:
                    self._open_round(self._round + 1)
                    continue
                if now >= deadline:
                    if self._global is None:
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
                        self._fail(
                            f"only {joined} of {self.config.num_clients} clients joined within "
                            f"join_timeout={self.config.join_timeout:g}s (min_clients="
                            f"{self.config.quorum}); missing: {self._missing_clients()}"
                        )
                    continue
            elif self._phase is Phase.FIT:
                current = self._current
                assert current is not None
                deadline = current.started_mono + self.config.round_timeout
                if current.folding:
                    # Updates being folded are in, not missing: wait for them to land.
                    self._cond.wait(1.0)
                    continue
                done = set(current.contributors)
                waiting = sorted(
                    c for c in current.sampled if self._clients[c].active and c not in done
                )
                if not waiting and len(done) >= self.config.quorum:
                    self._phase = Phase.AGGREGATING
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
                            waiting,
                        )
                        self._phase = Phase.AGGREGATING
                        return "aggregate"
                    missing = sorted(set(self._clients) - done) + self._missing_clients()
                    self._fail(
                        f"round {current.number}: only {len(done)} of min_clients="
                        f"{self.config.quorum} clients reported within round_timeout="
                        f"{self.config.round_timeout:g}s; missing: {missing}"
                    )
                    continue
            elif self._phase in (Phase.FINISHED, Phase.FAILED):
                deadline = self._end_deadline
                # Wait (up to the grace period) until every client has heard how the run
                # ended, stragglers included; those still working also get to send their
                # final evaluation and leave.
                failed = self._phase is Phase.FAILED
                pending = [
                    c
                    for c, s in self._clients.items()
                    if not s.left and not (s.told_end and (failed or not s.active))
                ]
                if not pending or now >= deadline:
                    if pending:
                        log.warning("grace period over; not heard from: %s", sorted(pending))
                    return self._phase.value
            else:  # AGGREGATING is handled by run() outside the lock
                raise AssertionError(self._phase)
            self._cond.wait(max(0.0, deadline - now))

    def _aggregate(self) -> None:
        current = self._current
        assert current is not None and current.aggregator is not None
        assert self._global is not None
        frame = self._frame(self._global)
        aggregate = current.aggregator.result_into(frame.tensors)
        new_global = self.strategy.finish_round(current.number, self._global, aggregate)
        current.strategy_report = self.strategy.round_report(current.number)
        updates.check_signature(new_global, self._signature, what="aggregate")
        new_global, body = self._message(new_global, frame)
        with self._cond:
            current.duration_s = time.monotonic() - current.started_mono
            current.num_examples = current.aggregator.total_examples
            current.aggregator = None  # the round's buffers are no longer needed
            self._closing, self._current = current, None
            self._global, self._global_body = new_global, body
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
                "round %d/%d: %d clients, %d examples, train %s (%.2fs)",
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
                        current.number, sorted(self._clients), self.config.quorum
                    )
                )
                self._phase = Phase.FINISHED
                self._finished_at = _now_iso()
                self._end_deadline = time.monotonic() + self.config.grace_period
                log.info("finished %d rounds", current.number)
            else:
                self._open_round(current.number + 1)
            self._cond.notify_all()

    def _open_round(self, number: int) -> None:
        assert self._global is not None
        self._round = number
        active = sorted(c for c, s in self._clients.items() if s.active) or sorted(self._clients)
        self._current = _Round(
            number=number,
            started_mono=time.monotonic(),
            started_at=_now_iso(),
            aggregator=self.strategy.start_round(number, self._global),
            sampled=self.strategy.sample_fit(number, active, self.config.quorum),
            eval_sampled=self.strategy.sample_evaluate(
                number - 1, sorted(self._clients), self.config.quorum
            ),
        )
        self._phase = Phase.FIT
        self._cond.notify_all()

    def _fail(self, message: str) -> None:
        log.error("run failed: %s", message)
        self._error = message
        self._phase = Phase.FAILED
        self._finished_at = _now_iso()
        self._end_deadline = time.monotonic() + min(self.config.grace_period, 10.0)
        self._cond.notify_all()

    # ----------------------------------------------------------------- helpers

    def _require_client(self, client_id: str) -> _Client:
        client = self._clients.get(client_id)
        if client is None:
            self._count_rejection(protocol.UNKNOWN_CLIENT)
            raise UnknownClient(f"client {client_id!r} has not joined this run")
        return client

    def _raise_if_failed(self) -> None:
        if self._phase is Phase.FAILED:
            raise RunFailed(self._error or "the run failed")

    def _missing_clients(self) -> list[str]:
        if self.config.client_ids is None:
            absent = self.config.num_clients - len(self._clients)
            return [f"<{absent} not yet joined>"] if absent > 0 else []
        return sorted(set(self.config.client_ids) - set(self._clients))

    def _decode(self, body: wire.Buffer) -> Weights:
        return updates.decode(body, self.config.max_update_bytes, self.config.wire_dtype)

    def _set_global(self, weights: Weights, initial: bool) -> None:
        self._global, self._global_body = self._message(weights, self._frame(weights))
        if initial:
            self._signature = wire.describe(weights)

    def _frame(self, template: Weights) -> wire.Frame:
        """The next global model's message, laid out like ``template``, to be filled."""
        return wire.Frame(template, self.config.wire_dtype, allocate=self._bodies.empty)

    def _message(self, weights: Weights, frame: wire.Frame) -> tuple[Weights, wire.Buffer]:
        """The global model and its message, from ``weights`` (some perhaps in ``frame``).

        With float32 on the wire the model's tensors are the message's: one copy of the
        model in memory, and an aggregator can write its result straight there.
        Half-precision messages hold other values, so the model stays apart.
        """
        frame.fill(weights)
        body = frame.seal()
        return (frame.tensors if self.config.wire_dtype == "float32" else weights), body

    # ------------------------------------------------------------- checkpoints

    def _checkpoint_state(self, closed: _Round) -> checkpoint.Checkpoint:
        assert self._global is not None
        return checkpoint.Checkpoint(
            completed_round=closed.number,
            global_weights=self._global,
            strategy_state=self.strategy.state_dict(),
            run_state={
                "rounds": [r.to_state() for r in [*self._rounds, closed]],
                "evals": {
                    str(number): {"metrics": agg.to_state(), "seen": sorted(seen)}
                    for number, (agg, seen) in self._evals.items()
                },
                "started_at": self._started_at,
            },
        )

    def _restore(self, saved: checkpoint.Checkpoint) -> None:
        run = saved.run_state
        self._set_global(saved.global_weights, initial=True)
        self.strategy.load_state_dict(saved.strategy_state)
        self._rounds = [_Round.from_state(r) for r in run["rounds"]]
        self._evals = {
            int(number): (WeightedMetrics.from_state(e["metrics"]), set(e["seen"]))
            for number, e in run["evals"].items()
        }
        self._started_at = run["started_at"]
        self._round = saved.completed_round
        if self._round >= self.config.num_rounds:
            self._phase = Phase.FINISHED
            self._finished_at = _now_iso()
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
            return self._global

    def status(self, since: int | None = None) -> dict[str, Any]:
        """A snapshot of the run; with ``since``, also the records of rounds >= since."""
        with self._cond:
            current = self._current
            return {
                "phase": self._phase.value,
                "round": self._round,
                "num_rounds": self.config.num_rounds,
                "num_clients": self.config.num_clients,
                "min_clients": self.config.quorum,
                "joined": sorted(self._clients),
                "active": sorted(c for c, s in self._clients.items() if s.active),
                "submitted": sorted(current.contributors) if current else [],
                "completed_rounds": len(self._rounds),
                "error": self._error,
                "last_round": self._round_record(self._rounds[-1]) if self._rounds else None,
                "last_evaluation": self._last_evaluation(),
                **({"rounds": self._records(since)} if since is not None else {}),
            }

    def _records(self, since: int = 0) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        if since <= 0:
            records.append({"round": 0, "evaluate": self._eval_record(0)})
        records += [self._round_record(r) for r in self._rounds if r.number >= since]
        return records

    def _last_evaluation(self) -> dict[str, Any] | None:
        if not self._evals:
            return None
        number = max(self._evals)
        return {"round": number, **self._eval_record(number)}

    def _eval_record(self, number: int) -> dict[str, Any] | None:
        if number not in self._evals:
            return None
        agg, _ = self._evals[number]
        return {
            "num_clients": agg.num_clients,
            "num_examples": agg.num_examples,
            "metrics": agg.mean(),
        }

    def _round_record(self, record: _Round) -> dict[str, Any]:
        return {
            "round": record.number,
            "started_at": record.started_at,
            "duration_s": record.duration_s,
            "contributors": sorted(record.contributors),
            "timed_out": record.timed_out,
            "refused": record.refused,
            "num_examples": record.num_examples,
            "train": record.train.mean(),
            "evaluate": self._eval_record(record.number),
            "bytes_in": record.bytes_in,
            "bytes_out": record.bytes_out,
            "sampled": record.sampled,
            **({"strategy": record.strategy_report} if record.strategy_report else {}),
        }

    def history(self) -> dict[str, Any]:
        """Everything that happened, as written to history.json."""
        with self._cond:
            rounds = self._records()
            return {
                "status": self._phase.value,
                "error": self._error,
                "num_rounds": self.config.num_rounds,
                "num_clients": self.config.num_clients,
                "min_clients": self.config.quorum,
                "strategy": self.strategy.name,
                "strategy_options": self.strategy.options(),
                "clients": sorted(self._clients),
                "started_at": self._started_at,
                "finished_at": self._finished_at,
                "rounds": rounds,
            }

    def prometheus(self) -> str:
        """Counters and gauges in Prometheus' text exposition format."""
        with self._cond:
            lines = [
                "# HELP fl_round Current round (0 before the first).",
                "# TYPE fl_round gauge",
                f"fl_round {self._round}",
                "# HELP fl_rounds_completed Rounds aggregated so far.",
                "# TYPE fl_rounds_completed gauge",
                f"fl_rounds_completed {len(self._rounds)}",
                "# HELP fl_clients_joined Clients that joined.",
                "# TYPE fl_clients_joined gauge",
                f"fl_clients_joined {len(self._clients)}",
                "# HELP fl_clients_active Clients taking part in the current round.",
                "# TYPE fl_clients_active gauge",
                f"fl_clients_active {sum(s.active for s in self._clients.values())}",
                "# HELP fl_phase The run's phase (1 for the current one).",
                "# TYPE fl_phase gauge",
            ]
            lines += [f'fl_phase{{phase="{p.value}"}} {int(p is self._phase)}' for p in Phase]
            lines += [
                "# HELP fl_updates_accepted_total Client updates folded into an aggregate.",
                "# TYPE fl_updates_accepted_total counter",
                f"fl_updates_accepted_total {self._counters['updates_accepted']}",
                "# HELP fl_updates_duplicate_total Resent updates answered without counting.",
                "# TYPE fl_updates_duplicate_total counter",
                f"fl_updates_duplicate_total {self._counters['updates_duplicate']}",
                "# HELP fl_requests_rejected_total Requests refused, by reason.",
                "# TYPE fl_requests_rejected_total counter",
            ]
            lines += [
                f'fl_requests_rejected_total{{reason="{k}"}} {v}'
                for k, v in sorted(self._rejections.items())
            ]
            lines += [
                "# HELP fl_bytes_received_total Update bytes received.",
                "# TYPE fl_bytes_received_total counter",
                f"fl_bytes_received_total {self._counters['bytes_in']}",
                "# HELP fl_bytes_sent_total Model bytes sent.",
                "# TYPE fl_bytes_sent_total counter",
                f"fl_bytes_sent_total {self._counters['bytes_out']}",
            ]
            return "\n".join(lines) + "\n"


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items()) or "-"
