"""Asynchronous rounds (FedBuff, Nguyen et al., AISTATS 2022): the Federation of a
``--mode async`` run.

Clients fetch the newest model whenever they are ready and send an update tagged with
the version it started from; every K updates the server applies their
staleness-weighted mean change and makes the next version. docs/asynchronous.md is the
normative description (versions, concurrency, staleness, what history records).

``AsyncFederation`` keeps ``Federation``'s public methods and HTTP surface; it overrides
the seams that decide who gets which model (``_try_model``), which version an update
counts in (``_check_round_open``), how it is folded (the version's aggregator is wrapped
in a ``StalenessFold``), and when a version is made (``_drive_fit``). A version is a
round of the base class: opened by ``_open_round``, made and checkpointed by
``_aggregate``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fl_kubeflow import strategies, wire
from fl_kubeflow.async_params import AsyncParams, staleness_weight
from fl_kubeflow.protocol import Phase
from fl_kubeflow.server import checkpoint
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.errors import WrongRound
from fl_kubeflow.server.federation import Federation, ModelAnswer
from fl_kubeflow.server.records import RoundRecord, summarise_ids
from fl_kubeflow.strategies import RoundAggregator, Strategy
from fl_kubeflow.strategies.sampling import sample_clients
from fl_kubeflow.tensors import cast_like, is_float
from fl_kubeflow.wire import Weights

log = logging.getLogger("fl_kubeflow.server")


@dataclass
class Slot:
    """A client training now: the version it was handed and when its slot lapses."""

    base: int
    deadline: float


class StalenessFold(RoundAggregator):
    """A version's aggregator seen through FedBuff's update rule.

    Each update i is folded into the strategy's aggregator ``inner`` as
    ``w[c] + s(tau_i) * (w_i - w[b_i])`` with its example count, so the inner mean is
    ``w[c] + mean``; the result is ``w[c] + eta * mean``, which the strategy's
    ``finish_round`` then takes as the round's aggregate.

    Args:
        inner: The strategy's aggregator for the version (its ``start_round``).
        record: The version's record: ``base_versions`` and ``staleness`` of each
            update, set before it is folded.
        newest: w[c], the version the new one is made from.
        bases: The retained versions by number (w[b_i] for every update folded).
        params: The run's asynchronous options (exponent a, eta).
        folded: Called with the client id once its update is folded (or failed to be).
    """

    concurrent = True  # the inner aggregator locks what it must

    def __init__(
        self,
        inner: RoundAggregator,
        record: RoundRecord,
        newest: Weights,
        bases: Mapping[int, Weights],
        params: AsyncParams,
        folded: Callable[[str], None],
    ) -> None:
        super().__init__()
        self.inner = inner
        self.report = inner.report
        self._record = record
        self._newest = newest
        self._bases = bases
        self._params = params
        self._folded = folded

    def _add(self, weights: Weights, num_examples: int, client_id: str | None) -> None:
        assert client_id is not None
        try:
            self.inner.add(self._moved(weights, client_id), num_examples, client_id)
        finally:
            self._folded(client_id)

    def _moved(self, weights: Weights, client_id: str) -> Weights:
        """w[c] + s(tau) * (w_i - w[b_i]), in float64, cast to each tensor's dtype."""
        staleness = self._record.staleness[client_id]
        if staleness == 0:
            return weights  # w[c] + (w_i - w[c]): the update itself, exactly
        weight = staleness_weight(staleness, self._params.staleness_exponent)
        base = self._bases[self._record.base_versions[client_id]]
        moved: Weights = {}
        for name, value in weights.items():
            newest = np.asarray(self._newest[name], np.float64)
            change = np.subtract(value, base[name], dtype=np.float64)
            moved[name] = cast_like(newest + weight * change, value.dtype)
        return moved

    def result(self) -> Weights:
        return self.result_into({})

    def result_into(self, out: Weights) -> Weights:
        mean = self.inner.result_into(out)
        eta = self._params.server_learning_rate
        if eta == 1.0:
            return mean
        stepped: Weights = {}
        for name, value in mean.items():
            newest = self._newest[name]
            if not is_float(newest):
                stepped[name] = value  # integer tensors are averaged as they are
                continue
            start = np.asarray(newest, np.float64)
            stepped[name] = cast_like(
                start + eta * np.subtract(value, start, dtype=np.float64), newest.dtype
            )
        return stepped


class AsyncFederation(Federation):
    """One asynchronous run: model versions, a buffer of K updates, staleness limits.

    Version c is the base class's round c completed; while the buffer of version c + 1
    fills, ``_round`` is c + 1 and ``_current`` its record.
    """

    def __init__(
        self,
        config: ServerConfig,
        strategy: Strategy,
        initial_weights: Weights | None = None,
        resume: checkpoint.Checkpoint | None = None,
    ) -> None:
        params = config.asynchronous
        if params is None:
            raise ValueError("AsyncFederation needs ServerConfig.asynchronous (AsyncParams)")
        strategies.check_async(strategy, params, config.num_clients)
        self.params = params
        self.buffer_size = params.buffer_for(config.num_clients)
        self.concurrency = params.concurrency_for(config.num_clients, strategy.fraction_fit)
        # Who trains now; who was drawn for a free slot and not yet answered; who is
        # long-polling for a model (the draw's candidates when fraction_fit < 1).
        self._slots: dict[str, Slot] = {}
        self._drawn: set[str] = set()
        self._polling: set[str] = set()
        self._draws = 0
        self._sampling = strategy.fraction_fit < 1.0
        # A model long-poll is woken only when its answer may have changed (the epoch,
        # below): a slot freed counts only if some waiter was refused for want of one.
        self._slot_wanted = False
        self._slots_freed = 0
        # The versions some training client started from, within max_staleness.
        self._bases: dict[int, Weights] = {}
        super().__init__(config, strategy, initial_weights, resume)

    # ------------------------------------------------------------------ models

    def wait_for_model(self, client_id: str, server_round: int, wait: float) -> ModelAnswer | None:
        try:
            return super().wait_for_model(client_id, server_round, wait)
        finally:
            with self._cond:
                # No longer waiting: not a candidate for a free slot, and a slot drawn
                # for it and not taken goes back.
                self._polling.discard(client_id)
                if client_id in self._drawn:
                    self._drawn.discard(client_id)
                    self._slot_freed()
                    self._cond.notify_all()

    def _model_epoch(self) -> Hashable | None:
        """What a waiting client's model answer depends on besides its own requests (under
        the lock): phase and version (a new version, the run's end or failure),
        revocations (its own), slots freed while someone waited for one, and the draws
        (who gets a freed slot with fraction_fit < 1).

        An update accepted, a client joining or a slot taken changes none of them, so
        with N clients waiting a version wakes them a few times, not at every update.
        Whether the client has an update in the buffer is its own request's doing.
        """
        return (self._phase, self._round, len(self._revoked), self._slots_freed, self._draws)

    def _slot_freed(self) -> None:
        """A training slot came free (under the lock, before the notify): waiters refused
        for want of one must ask again; nobody else needs waking for it."""
        if self._slot_wanted:
            self._slot_wanted = False
            self._slots_freed += 1

    def _try_model(self, client_id: str, server_round: int) -> ModelAnswer | None:
        """The newest version c, as round c + 1, once the client may train on it.

        It may when it has no update in the buffer of version c + 1 (it has not
        trained on c yet, or its update was lost with a restarted server) and it holds
        a training slot or gets a free one. Ending phases answer as in a plain run.
        """
        if self._phase in (Phase.FAILED, Phase.FINISHED):
            return super()._try_model(client_id, server_round)
        client = self._require_client(client_id)
        current = self._current
        if self._phase is not Phase.FIT or current is None:
            return None  # not started, or the next version is being made
        if client_id in current.contributors or client_id in current.folding:
            return None  # one update per client and buffer: wait for the next version
        if not self._may_train(client_id):
            return None
        if not client.active:
            log.info("client %s is back; training on version %d", client_id, current.number - 1)
            client.active = True
        self._polling.discard(client_id)
        self._slots[client_id] = Slot(
            base=current.number - 1, deadline=time.monotonic() + self.config.round_timeout
        )
        config = {
            **self.strategy.configure_fit(current.number),
            "evaluate": current.was_sampled(client_id, evaluate=True),
        }
        return self._answer(Phase.FIT, current.number, config)

    def _may_train(self, client_id: str) -> bool:
        """Whether the client holds a training slot or takes a free one now.

        With fraction_fit < 1 a free slot goes to a client drawn among those waiting
        (the strategy's seeded sampler, one draw per slot), not to the first to ask.
        """
        if client_id in self._slots:
            return True  # asking again for the round it holds
        free = self.concurrency - len(self._slots) - len(self._drawn)
        if not self._sampling:
            if free > 0:
                return True
        else:
            if client_id not in self._drawn:
                self._polling.add(client_id)
                if free > 0:
                    self._draw(free)
            if client_id in self._drawn:
                self._drawn.discard(client_id)
                return True
        # Waiting for a slot (or a draw): the next slot freed must wake the waiters.
        self._slot_wanted = True
        return False

    def _draw(self, free: int) -> None:
        """Draw a waiting client for each of ``free`` slots (under the lock)."""
        current = self._current
        busy = set(self._slots) | self._drawn
        if current is not None:
            busy |= set(current.contributors) | current.folding
        candidates = sorted(self._polling - busy)
        for _ in range(min(free, len(candidates))):
            self._draws += 1
            # fraction 1/n with at least one: a single client, uniformly, seeded by
            # (seed, draw number) and the candidates alone.
            (chosen,) = sample_clients(
                candidates, 1.0 / len(candidates), 1, self.strategy.seed, self._draws
            )
            self._drawn.add(chosen)
            candidates.remove(chosen)
            # Wake the chosen (only on a change: waiters woken for nothing would wake
            # each other in turn).
            self._cond.notify_all()

    def _release(self, client_id: str) -> None:
        """Free the client's training slot (its update was folded or refused, or it left)."""
        with self._cond:
            if self._slots.pop(client_id, None) is not None:
                self._slot_freed()
                self._cond.notify_all()

    # ----------------------------------------------------------------- clients

    def leave_all(self, client_ids: Sequence[str]) -> None:
        super().leave_all(client_ids)
        for client_id in client_ids:
            self._release(client_id)

    def revoke(self, client_id: str) -> None:
        super().revoke(client_id)
        self._release(client_id)

    # ----------------------------------------------------------------- updates

    def _newest(self) -> int:
        """The newest version clients may hold (under the lock)."""
        if self._phase in (Phase.FIT, Phase.AGGREGATING):
            return self._round - 1
        return self._round

    def _counted(self, client_id: str, base: int) -> RoundRecord | None:
        """The version whose buffer counted this client's update based on ``base``."""
        for record in [*self._rounds, self._closing, self._current]:
            if (
                record is not None
                and client_id in record.contributors
                and record.base_versions.get(client_id) == base
            ):
                return record
        return None

    def _check_round_open(
        self, client_id: str, server_round: int, early: bool = False
    ) -> RoundRecord | None:
        """Raise unless an update for ``server_round`` (based on version round - 1) can be
        counted; the version that counted it already, if one did (a resend).

        Without ``early`` it waits while the buffer is full (or the version is being
        made) and then takes a place in the next buffer, with its staleness against the
        version that buffer is made from.
        """
        base = server_round - 1
        deadline = time.monotonic() + self.config.round_timeout
        while True:
            self._raise_if_failed()
            counted = self._counted(client_id, base)
            if counted is not None:
                return counted
            current = self._current
            if (
                not early
                and current is not None
                and client_id in current.folding
                and current.base_versions.get(client_id) == base
            ):
                # A resend while the first copy is being folded: answered once it lands.
                self._cond.wait(1.0)
                continue
            self._check_base(client_id, base)
            if early:
                return None
            if (
                self._phase is Phase.FIT
                and current is not None
                and len(current.contributors) + len(current.folding) < self.buffer_size
                and client_id not in current.contributors
                and client_id not in current.folding
            ):
                current.base_versions[client_id] = base
                current.staleness[client_id] = current.number - 1 - base
                return None
            # The buffer is full: wait for the version to be made, then count in the next.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._refuse_update(
                    client_id,
                    "buffer_full",
                    f"the buffer of version {self._round} stayed full for "
                    f"round_timeout={self.config.round_timeout:g}s",
                )
            self._cond.wait(remaining)

    def _check_base(self, client_id: str, base: int) -> None:
        """Refuse (409) an update that no buffer may count: the run has finished, its
        base is not out yet, too stale, or no longer held (under the lock)."""
        newest = self._newest()
        if self._phase is Phase.FINISHED:
            self._refuse_update(
                client_id,
                "finished",
                f"the run has finished with version {newest}; fetch the final model",
            )
        if self._phase is Phase.WAITING or base > newest or base < 0:
            self._count_rejection("future_round")
            raise WrongRound(
                f"round {base + 1} has not started; the current round is {self._round}",
                current_round=self._round,
            )
        staleness = newest - base
        limit = self.params.max_staleness
        if staleness > limit:
            self._refuse_update(
                client_id,
                "too_stale",
                f"update based on version {base} is {staleness} versions behind the current "
                f"version {newest} (max_staleness={limit})",
            )
        if base not in self._bases:
            self._refuse_update(
                client_id,
                "base_not_held",
                f"update based on version {base}, which this server no longer holds (it "
                f"keeps the versions clients train on; the current version is {newest}): "
                "fetch the newest model",
            )

    def _refuse_update(self, client_id: str, code: str, reason: str) -> None:
        """Count, record and raise (409 wrong_round) the refusal of an update."""
        self._refuse(client_id, self._round, code, reason, locked=True)
        raise WrongRound(reason, current_round=self._round)

    def _refuse(
        self, client_id: str, server_round: int, code: str, reason: str, locked: bool = False
    ) -> None:
        """Refusals of an update are recorded in the version being made when it came
        (the newest version once the run is over), whatever round the update names, and
        free the client's slot."""
        if not locked:
            with self._cond:
                self._refuse(client_id, server_round, code, reason, locked=True)
            return
        self._count_rejection(code)
        record = self._current or self._closing or (self._rounds[-1] if self._rounds else None)
        if record is not None:
            record.refuse(client_id, reason)
        self._release(client_id)

    # ------------------------------------------------------------------ driver

    def _base_weights(self) -> Weights:
        """The newest version as its clients decoded it: the base of their changes (with
        half-precision wire, not the server's float32 model)."""
        assert self._model.weights is not None
        if self.config.wire_dtype == "float32":
            return self._model.weights
        return wire.decode(self._model.body, wire_dtype=self.config.wire_dtype)

    def _drive_fit(self, current: RoundRecord, now: float) -> str | float | None:
        """Make the version once K updates are folded, or at round_timeout from those
        there if they are at least min(min_clients, K); lapse slots held round_timeout."""
        next_lapse = self._lapse_slots(current, now)
        if current.folding:
            return now + 1.0  # updates being folded are in: wait for them to land
        done = len(current.contributors)
        if done >= self.buffer_size:
            return "aggregate"
        deadline = current.started_mono + self.config.round_timeout
        if now < deadline:
            return min(deadline, next_lapse)
        needed = min(self.config.quorum, self.buffer_size)
        if done >= needed:
            log.warning(
                "version %d: round_timeout=%gs; made from %d of buffer_size=%d updates",
                current.number,
                self.config.round_timeout,
                done,
                self.buffer_size,
            )
            return "aggregate"
        self._fail(
            f"version {current.number}: only {done} of buffer_size={self.buffer_size} updates "
            f"came within round_timeout={self.config.round_timeout:g}s (at least "
            f"min(min_clients, buffer_size)={needed} needed); training: "
            f"{summarise_ids(self._slots)}; missing: {summarise_ids(self._clients.missing())}"
        )
        return None

    def _lapse_slots(self, current: RoundRecord, now: float) -> float:
        """Free the slots held round_timeout without an update; the next lapse's time."""
        lapsed = sorted(c for c, slot in self._slots.items() if slot.deadline <= now)
        for client_id in lapsed:
            del self._slots[client_id]
            self._clients[client_id].active = False
            current.timed_out.append(client_id)
        if lapsed:
            self._slot_freed()
            log.warning(
                "version %d: no update within round_timeout=%gs from %s; their slots are free",
                current.number,
                self.config.round_timeout,
                summarise_ids(lapsed),
            )
            self._cond.notify_all()
        return min((slot.deadline for slot in self._slots.values()), default=math.inf)

    def _open_round(self, number: int) -> None:
        """Open the buffer of version ``number``, made from version ``number - 1``."""
        super()._open_round(number)
        current = self._current
        assert current is not None and current.aggregator is not None
        assert self._model.weights is not None
        newest = number - 1
        self._bases[newest] = self._base_weights()
        # Kept: the newest, and versions a training client started from within reach.
        training = {slot.base for slot in self._slots.values()}
        for version in list(self._bases):
            too_old = newest - version > self.params.max_staleness
            if version != newest and (too_old or version not in training):
                del self._bases[version]
        # Who trains is decided slot by slot, not by a per-round draw.
        current.sampled = []
        current.aggregator = StalenessFold(
            current.aggregator,
            current,
            self._model.weights,
            self._bases,
            self.params,
            self._release,
        )
        joined = max(len(self._clients), self.buffer_size)
        self.strategy.set_sampling_rate(number, self.buffer_size / joined)
