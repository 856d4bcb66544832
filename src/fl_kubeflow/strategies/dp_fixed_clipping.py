"""Central differential privacy with fixed clipping, around any averaging strategy.

Per round (DP-FedAvg, McMahan et al. 2018; Flower's
``DifferentialPrivacyServerSideFixedClipping``):

1. each update's change from the global model is clipped to L2 norm C
   (``clipping="server"``: here; ``"client"``: by the client before sending, told
   C in the round config, and clipped again here so the bound never rests on a
   client's honesty);
2. the clipped changes are averaged with equal weights: an example-weighted mean
   would let one client move the average by more than C / m, beyond what the
   noise is sized for;
3. Gaussian noise with standard deviation z * C is added to the *sum* of the m
   clipped changes, i.e. z * C / m to their mean;
4. the wrapped strategy's ``finish_round`` turns the noisy aggregate into the next
   global model (server momentum or Adam see only noisy values: post-processing).

After each round ``round_report`` gives the (epsilon, delta) spent so far.
The noise comes from numpy's PCG64 seeded from OS entropy: not seedable on
purpose, and, as in Flower and Opacus' default mode, not a cryptographically
secure sampler.

Under secure aggregation the server sees only the sum, so it cannot clip: only
``clipping="client"`` is accepted, clients send with weight 1 each, and
``secure_aggregate`` adds the same noise to the unmasked mean (step 3); the bound
then rests on the clients' clipping (docs/secure_aggregation.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from fl_kubeflow import protocol
from fl_kubeflow.checks import check_choice, check_float
from fl_kubeflow.privacy.accountant import PrivacyAccountant
from fl_kubeflow.privacy.clipping import CLIENT_CLIPPING_KEY, clip_delta, l2_norm, weight_delta
from fl_kubeflow.strategies.base import RoundAggregator, Strategy
from fl_kubeflow.tensors import cast_like
from fl_kubeflow.wire import Weights

log = logging.getLogger("fl_kubeflow.privacy")

CLIPPING_MODES = ("server", "client")
# A client-clipped float32 update may exceed C by rounding; beyond this it was not clipped.
_CLIENT_SLACK = 1e-5


class DPAggregator(RoundAggregator):
    """Clips each update, feeds it with weight 1 to the wrapped aggregator, then adds noise."""

    def __init__(
        self,
        inner: RoundAggregator,
        global_weights: Weights,
        clipping_norm: float,
        noise_multiplier: float,
        client_side: bool,
        rng: np.random.Generator,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.global_weights = global_weights
        self.clipping_norm = clipping_norm
        self.noise_multiplier = noise_multiplier
        self.client_side = client_side
        self.rng = rng
        self.clipped = 0
        self.max_norm = 0.0
        self.max_clipped_norm = 0.0

    def _add(self, weights: Weights, num_examples: int, client_id: str | None) -> None:
        clipped, norm = clip_delta(weight_delta(weights, self.global_weights), self.clipping_norm)
        if norm > self.clipping_norm * (1 + (_CLIENT_SLACK if self.client_side else 0.0)):
            self.clipped += 1
            if self.client_side:
                log.warning(
                    "client %s sent an update of norm %.4g over dp_clipping_norm=%g; clipped here",
                    client_id or "?",
                    norm,
                    self.clipping_norm,
                )
        self.max_norm = max(self.max_norm, norm)
        self.max_clipped_norm = max(self.max_clipped_norm, l2_norm(clipped))
        update = {
            name: np.asarray(g, np.float64) + clipped[name]
            for name, g in self.global_weights.items()
        }
        self.inner.add(update, 1, client_id)

    def noise_std(self) -> float:
        """Standard deviation of the noise on the mean of this round's clipped changes."""
        return noise_std(self.noise_multiplier, self.clipping_norm, self.count)

    def result(self) -> Weights:
        std = self.noise_std()
        out = add_noise(self.inner.result(), self.global_weights, std, self.rng)
        self.report.update(
            noise_report(
                "client" if self.client_side else "server",
                self.clipping_norm,
                self.noise_multiplier,
                std,
                self.count,
            )
        )
        self.report.update(
            {
                # server mode: updates scaled down; client mode: updates that arrived unclipped
                "clipped_updates": self.clipped,
                "max_update_norm": self.max_norm,
                "max_clipped_norm": self.max_clipped_norm,
            }
        )
        return out


def noise_std(noise_multiplier: float, clipping_norm: float, count: int) -> float:
    """z * C on the sum of ``count`` clipped changes: z * C / count on their mean."""
    return noise_multiplier * clipping_norm / max(1, count)


def add_noise(
    mean: Weights, global_weights: Weights, std: float, rng: np.random.Generator
) -> Weights:
    """``mean`` plus Gaussian noise of standard deviation ``std`` on every element, in the
    global model's dtypes."""
    out: Weights = {}
    for name, g in global_weights.items():
        value = np.asarray(mean[name], np.float64)
        if std > 0:
            value = value + rng.normal(0.0, std, size=value.shape)
        out[name] = cast_like(value, g.dtype)
    return out


def noise_report(
    clipping: str, clipping_norm: float, noise_multiplier: float, std: float, updates: int
) -> dict[str, Any]:
    """The round's "dp" facts both ways of adding the noise share."""
    return {
        "clipping": clipping,
        "clipping_norm": clipping_norm,
        "noise_multiplier": noise_multiplier,
        "noise_std": std,
        "updates": updates,
    }


class DPFixedClipping(Strategy):
    """Central DP with a fixed clipping norm around an averaging strategy.

    Args:
        inner: the strategy whose aggregate is privatised (FedAvg family only).
        noise_multiplier: z >= 0; noise std on the sum of clipped changes is z * C
            (0: clipping without noise, epsilon is infinite).
        clipping_norm: C > 0, the L2 bound on each client's change.
        clipping: "server" (default) or "client".
        target_delta: delta of the reported (epsilon, delta); keep it below 1 / clients.
    """

    name: ClassVar[str] = "dp"

    def __init__(
        self,
        inner: Strategy,
        *,
        noise_multiplier: float,
        clipping_norm: float,
        clipping: str = "server",
        target_delta: float = 1e-5,
    ) -> None:
        if not inner.averaging:
            raise ValueError(
                f"differential privacy options need an averaging strategy (fedavg, fedavgm, "
                f"fedprox, fedadam, fedyogi, fedadagrad); {inner.name!r} is not: its noise "
                "would not match its sensitivity"
            )
        # Sampling options live on the wrapped strategy; this wrapper adds none.
        super().__init__(
            fraction_fit=inner.fraction_fit,
            fraction_evaluate=inner.fraction_evaluate,
            seed=inner.seed,
        )
        self.inner = inner
        self.name = f"{inner.name}+dp"  # type: ignore[misc]  # per-instance, for history
        self.noise_multiplier = check_float("noise_multiplier", noise_multiplier, minimum=0.0)
        self.clipping_norm = check_float(
            "clipping_norm", clipping_norm, minimum=0.0, min_inclusive=False
        )
        self.clipping = check_choice("clipping", clipping, CLIPPING_MODES)
        self.target_delta = check_float(
            "target_delta",
            target_delta,
            minimum=0.0,
            maximum=1.0,
            min_inclusive=False,
            max_inclusive=False,
        )
        self.accountant = PrivacyAccountant(self.noise_multiplier, self.target_delta)
        self._sampling_rates: dict[int, float] = {}
        self._rng = np.random.default_rng()
        if self.noise_multiplier == 0:
            log.warning("noise_multiplier=0: updates are clipped but no noise is added (no DP)")

    def options(self) -> dict[str, Any]:
        return {
            **self.inner.options(),
            "noise_multiplier": self.noise_multiplier,
            "clipping_norm": self.clipping_norm,
            "clipping": self.clipping,
            "target_delta": self.target_delta,
        }

    def check(self, num_clients: int, min_clients: int) -> None:
        self.inner.check(num_clients, min_clients)
        if self.target_delta >= 1.0 / num_clients:
            log.warning(
                "target_delta=%g is not below 1/num_clients=%g: such a delta allows "
                "publishing one client's update outright",
                self.target_delta,
                1.0 / num_clients,
            )

    def sample_fit(
        self, server_round: int, client_ids: Sequence[str], min_clients: int
    ) -> list[str]:
        chosen = self.inner.sample_fit(server_round, client_ids, min_clients)
        available = len(set(client_ids))
        if available:
            self._sampling_rates[server_round] = len(chosen) / available
        return chosen

    def sample_evaluate(
        self, server_round: int, client_ids: Sequence[str], min_clients: int
    ) -> list[str]:
        return self.inner.sample_evaluate(server_round, client_ids, min_clients)

    def configure_fit(self, server_round: int) -> dict[str, Any]:
        config = self.inner.configure_fit(server_round)
        if self.clipping == "client":
            config = {**config, CLIENT_CLIPPING_KEY: self.clipping_norm}
        return config

    def start_round(self, server_round: int, global_weights: Weights) -> RoundAggregator:
        aggregator = DPAggregator(
            self.inner.start_round(server_round, global_weights),
            global_weights,
            self.clipping_norm,
            self.noise_multiplier,
            client_side=self.clipping == "client",
            rng=self._rng,
        )
        return self._track(server_round, aggregator)

    def set_sampling_rate(self, server_round: int, rate: float) -> None:
        """The accountant counts ``server_round`` with sampling rate ``rate``."""
        self._sampling_rates[server_round] = rate

    def check_asynchronous(self) -> None:
        """The wrapped rule decides (docs/asynchronous.md, "Strategies": how the noise
        and the accountant count a version)."""
        self.inner.check_asynchronous()

    # ------------------------------------------------- secure aggregation (SecAgg+)

    def check_secure_aggregation(self) -> None:
        """The wrapped rule must work on a sum, and the clients must clip: the server
        cannot clip an update it only sees masked."""
        self.inner.check_secure_aggregation()
        if self.clipping != "client":
            raise ValueError(
                f"differential privacy with clipping={self.clipping!r} clips each update on "
                "the server, which secure aggregation hides from it; use clipping=client "
                "(clients clip to clipping_norm, the server adds the noise to the sum)"
            )

    @property
    def secure_weighting(self) -> str:
        # Equal weights, as DPAggregator averages: the noise is sized for a mean of m changes.
        return protocol.SECAGG_UNIFORM

    def secure_aggregate(
        self, server_round: int, global_weights: Weights, mean: Weights, count: int
    ) -> Weights:
        """The wrapped rule's aggregate of the unmasked mean, plus noise of std z*C/count.

        The "dp" report matches DPAggregator's, less what only the server could measure
        by seeing each update (clipped updates, norms): the clients clipped, unseen.
        """
        aggregate = self.inner.secure_aggregate(server_round, global_weights, mean, count)
        std = noise_std(self.noise_multiplier, self.clipping_norm, count)
        report = self._reports.setdefault(server_round, {})
        report.update(noise_report("client", self.clipping_norm, self.noise_multiplier, std, count))
        return add_noise(aggregate, global_weights, std, self._rng)

    def finish_round(
        self, server_round: int, global_weights: Weights, aggregate: Weights
    ) -> Weights:
        new_global = self.inner.finish_round(server_round, global_weights, aggregate)
        # Without a sample_fit call for this round every client was asked: q = 1.
        rate = self._sampling_rates.pop(server_round, 1.0)
        self.accountant.step(rate)
        epsilon = self.accountant.epsilon()
        report = self._reports.setdefault(server_round, {})
        report.update(
            {
                "sampling_rate": rate,
                "rounds_accounted": len(self.accountant.sampling_rates),
                "epsilon": epsilon if math.isfinite(epsilon) else None,
                "delta": self.target_delta,
                "accountant": "rdp",
            }
        )
        log.info(
            "round %d: privacy spent epsilon=%s at delta=%g (z=%g, C=%g, q=%g)",
            server_round,
            f"{epsilon:.4g}" if math.isfinite(epsilon) else "inf",
            self.target_delta,
            self.noise_multiplier,
            self.clipping_norm,
            rate,
        )
        return new_global

    def round_report(self, server_round: int) -> dict[str, Any]:
        inner = self.inner.round_report(server_round)
        own = dict(self._reports.get(server_round, {}))
        return {**inner, "dp": own} if own else inner

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "accountant": self.accountant.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state.get("inner", {}))
        self.accountant.load_state_dict(state.get("accountant", {}))
