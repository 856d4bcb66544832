"""The Strategy interface: how one round's client updates become the next global model.

Modelled on Flower's strategies: the server calls ``configure_fit`` when it opens a
round, feeds every accepted update to the round's ``RoundAggregator`` as it arrives,
and asks ``finish_round`` for the new global model once the round closes. Rules
that can fold updates in one at a time (the FedAvg family) keep the server's memory
independent of the number of clients; robust rules (median, Krum) must buffer.

Hooks beyond Flower's ``aggregate_fit``:

* ``check(num_clients, min_clients)``: called once before the first round, so an
  option that cannot work for this federation (Krum's ``num_malicious`` too large
  for the quorum) fails at start, not in round 7.
* ``sample_fit`` / ``sample_evaluate``: which joined clients take part in a round
  (``fraction_fit``, ``fraction_evaluate``; seeded, see ``sampling``).
* ``round_report(server_round)``: extra facts for the round's history record
  (e.g. the privacy budget spent so far).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from fl_kubeflow import protocol
from fl_kubeflow.checks import check_fraction, check_int
from fl_kubeflow.strategies.sampling import sample_clients
from fl_kubeflow.wire import Weights

# Options every strategy takes (Flower's names), on top of its own.
COMMON_OPTIONS = ("fraction_fit", "fraction_evaluate", "seed")


class RoundAggregator(ABC):
    """Collects one round's updates.

    ``add`` may be called from several threads at once (the server folds updates
    as their requests arrive); ``result`` only after every ``add`` has returned.
    Aggregators whose ``_add`` is safe to run concurrently set ``concurrent``;
    for the others ``add`` runs one ``_add`` at a time.

    ``report`` is filled by the aggregator (typically in ``result``) with facts the
    strategy passes on through ``Strategy.round_report``.
    """

    concurrent: ClassVar[bool] = False

    def __init__(self) -> None:
        self.count = 0
        self.total_examples = 0
        self.report: dict[str, Any] = {}
        self._lock = threading.Lock()

    def add(self, weights: Weights, num_examples: int, client_id: str | None = None) -> None:
        """Fold in one validated update (names, shapes and dtypes already match).

        ``client_id`` is optional: rules that pick clients (Krum) name them in the
        round report when the server passes it.
        """
        if self.concurrent:
            self._add(weights, num_examples, client_id)
        else:
            with self._lock:
                self._add(weights, num_examples, client_id)
        with self._lock:
            self.count += 1
            self.total_examples += num_examples

    @abstractmethod
    def _add(self, weights: Weights, num_examples: int, client_id: str | None) -> None: ...

    @abstractmethod
    def result(self) -> Weights:
        """The aggregate of everything added; called once, with count >= 1."""

    def result_into(self, out: Weights) -> Weights:
        """``result``, written into ``out``'s arrays where the aggregator can (the server
        passes the tensors of the next model's message); the others are new arrays."""
        return self.result()


class Strategy(ABC):
    """One aggregation rule. Subclasses register themselves under ``name``.

    Args:
        fraction_fit: Share of joined clients asked to train each round (at least
            ``min_clients`` of them); 1.0 asks everyone.
        fraction_evaluate: The same for evaluation.
        seed: Seed of the client sampling; the same seed samples the same clients.
    """

    name: ClassVar[str]
    # True: updates are folded in one at a time, memory independent of the client count.
    streaming: ClassVar[bool] = True
    # True: the aggregate is the example-weighted mean (what central DP's noise is sized for).
    averaging: ClassVar[bool] = False

    def __init__(
        self, *, fraction_fit: float = 1.0, fraction_evaluate: float = 1.0, seed: int = 0
    ) -> None:
        self.fraction_fit = check_fraction("fraction_fit", fraction_fit)
        self.fraction_evaluate = check_fraction("fraction_evaluate", fraction_evaluate)
        self.seed = check_int("seed", seed, minimum=0)
        self._reports: dict[int, dict[str, Any]] = {}

    def options(self) -> dict[str, Any]:
        """The options this strategy runs with, for logs and history."""
        return {
            "fraction_fit": self.fraction_fit,
            "fraction_evaluate": self.fraction_evaluate,
            "seed": self.seed,
        }

    def check(self, num_clients: int, min_clients: int) -> None:
        """Raise ValueError naming the option if it cannot work with this federation.

        ``min_clients`` is the quorum: the fewest updates a round may close with.
        """
        if not 1 <= min_clients <= num_clients:
            raise ValueError(f"min_clients={min_clients} must be in 1..num_clients={num_clients}")

    def sample_fit(
        self, server_round: int, client_ids: Sequence[str], min_clients: int
    ) -> list[str]:
        """The clients asked to train in ``server_round`` (sorted); the others wait."""
        return sample_clients(
            client_ids, self.fraction_fit, min_clients, self.seed, server_round, stream="fit"
        )

    def sample_evaluate(
        self, server_round: int, client_ids: Sequence[str], min_clients: int
    ) -> list[str]:
        """The clients asked to evaluate the global model after ``server_round``."""
        return sample_clients(
            client_ids,
            self.fraction_evaluate,
            min_clients,
            self.seed,
            server_round,
            stream="evaluate",
        )

    def configure_fit(self, server_round: int) -> dict[str, Any]:
        """Per-round instructions sent to clients with the global model."""
        return {}

    @abstractmethod
    def start_round(self, server_round: int, global_weights: Weights) -> RoundAggregator:
        """A fresh aggregator for ``server_round``, whose clients start from ``global_weights``."""

    def finish_round(
        self, server_round: int, global_weights: Weights, aggregate: Weights
    ) -> Weights:
        """The next global model; server-side optimizers override this."""
        return aggregate

    # ------------------------------------------------- secure aggregation (SecAgg+)

    def check_secure_aggregation(self) -> None:
        """Raise ValueError, saying why, if this rule cannot work on a masked sum.

        Under secure aggregation the server sees only the (weighted) sum of a round's
        updates: rules that need each update (median, trimmed mean, Krum) cannot run.
        """
        if not self.averaging:
            raise ValueError(
                f"strategy {self.name!r} needs every client's update, which secure "
                "aggregation hides from the server; use an averaging strategy (fedavg, "
                "fedavgm, fedprox, fedadam, fedyogi, fedadagrad)"
            )

    @property
    def secure_weighting(self) -> str:
        """How a client weights its update under secure aggregation: ``"examples"``
        (its example count: the example-weighted mean) or ``"uniform"`` (1 each)."""
        return protocol.SECAGG_BY_EXAMPLES

    def secure_aggregate(
        self, server_round: int, global_weights: Weights, mean: Weights, count: int
    ) -> Weights:
        """The round's aggregate from the unmasked weighted mean of ``count`` updates.

        Called instead of the round's aggregator under secure aggregation, before
        ``finish_round``; central DP adds its noise here.
        """
        return mean

    # ------------------------------------------------- asynchronous rounds (FedBuff)

    def check_asynchronous(self) -> None:
        """Raise ValueError, saying why, if this rule cannot aggregate FedBuff's buffer.

        An asynchronous version is made from K updates that started from different
        versions, each weighted by its staleness (docs/asynchronous.md): a mean of their
        changes. Rules that compare a round's cohort (median, trimmed mean, Krum) have
        no cohort to compare.
        """
        if not self.averaging:
            raise ValueError(
                f"strategy {self.name!r} compares one round's updates with each other; an "
                "asynchronous run (--mode async) averages a buffer of updates from "
                "different model versions: use an averaging strategy (fedavg, fedavgm, "
                "fedprox, fedadam, fedyogi, fedadagrad)"
            )

    def set_sampling_rate(self, server_round: int, rate: float) -> None:
        """The share of clients that ``server_round`` counts when the server, not
        ``sample_fit``, decides it (an asynchronous version: K / N). Only privacy
        accounting needs it: no-op here."""
        del server_round, rate

    def round_report(self, server_round: int) -> dict[str, Any]:
        """JSON-ready facts about ``server_round`` for its history record ({} if none)."""
        return dict(self._reports.get(server_round, {}))

    def _track(self, server_round: int, aggregator: RoundAggregator) -> RoundAggregator:
        """Let ``round_report`` show what ``aggregator`` reports (the same dict, filled later)."""
        self._reports[server_round] = aggregator.report
        # Old rounds' reports are small, but a run of 10^5 rounds should not grow without bound.
        for old in [r for r in self._reports if r < server_round - 1000]:
            del self._reports[old]
        return aggregator

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint between rounds (e.g. server momentum)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        del state  # stateless by default
