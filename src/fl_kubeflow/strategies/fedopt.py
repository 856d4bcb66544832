"""Adaptive server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization",
Algorithm 2): FedAdagrad, FedAdam and FedYogi.

The example-weighted mean of the clients' models gives the pseudo-gradient
``delta_t = mean_i(x_i) - x_t``, fed to an adaptive optimizer on the server::

    m_t = beta_1 * m_{t-1} + (1 - beta_1) * delta_t                   (m_{-1} = 0)
    v_t = v_{t-1} + delta_t^2                                         FedAdagrad
    v_t = v_{t-1} - (1 - beta_2) * delta_t^2 * sign(v_{t-1} - delta_t^2)   FedYogi
    v_t = beta_2 * v_{t-1} + (1 - beta_2) * delta_t^2                 FedAdam
    x_{t+1} = x_t + eta * m_t / (sqrt(v_t) + tau)                     (v_{-1} = tau^2)

As in the paper there is no bias correction, and ``v`` starts at ``tau^2``.
(Flower starts ``v`` at 0 and bias-corrects FedAdam's step; the two agree once
the moving averages have warmed up.) Aggregation streams; the server keeps two
extra model-sized buffers, ``m`` and ``v``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from fl_kubeflow.checks import check_float
from fl_kubeflow.strategies.fedavg import FedAvg
from fl_kubeflow.tensors import cast_like, is_float
from fl_kubeflow.wire import Weights


def second_moment(rule: str, v: np.ndarray, delta: np.ndarray, beta_2: float) -> np.ndarray:
    """The next ``v`` of ``rule`` (adagrad, yogi or adam) for pseudo-gradient ``delta``."""
    sq = delta * delta
    if rule == "adagrad":
        return v + sq
    if rule == "yogi":
        return v - (1.0 - beta_2) * sq * np.sign(v - sq)
    if rule == "adam":
        return beta_2 * v + (1.0 - beta_2) * sq
    raise ValueError(f"unknown adaptive rule {rule!r}")


def adaptive_step(
    rule: str,
    global_weights: Weights,
    aggregate: Weights,
    m: dict[str, np.ndarray],
    v: dict[str, np.ndarray],
    *,
    eta: float,
    beta_1: float,
    beta_2: float,
    tau: float,
) -> tuple[Weights, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One server step: (next global model, next m, next v). Inputs are not modified."""
    new_global: Weights = {}
    new_m: dict[str, np.ndarray] = {}
    new_v: dict[str, np.ndarray] = {}
    for name, x in global_weights.items():
        if not is_float(x):
            new_global[name] = aggregate[name]
            continue
        x64 = x.astype(np.float64)
        delta = aggregate[name].astype(np.float64) - x64
        m_prev = m.get(name)
        m_prev = np.zeros_like(delta) if m_prev is None else m_prev
        v_prev = v.get(name)
        v_prev = np.full_like(delta, tau * tau) if v_prev is None else v_prev
        m_t = beta_1 * m_prev + (1.0 - beta_1) * delta
        v_t = second_moment(rule, v_prev, delta, beta_2)
        new_m[name], new_v[name] = m_t, v_t
        new_global[name] = cast_like(x64 + eta * m_t / (np.sqrt(v_t) + tau), x.dtype)
    return new_global, new_m, new_v


class FedOpt(FedAvg):
    """Common base of the adaptive server optimizers.

    Args:
        eta: Server learning rate.
        beta_1: First-moment decay in [0, 1).
        beta_2: Second-moment decay in [0, 1) (unused by FedAdagrad).
        tau: Adaptivity: added to sqrt(v); larger is closer to plain server SGD with momentum.
    """

    rule: ClassVar[str]

    def __init__(
        self,
        *,
        eta: float = 0.01,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.eta = check_float("eta", eta, minimum=0.0, min_inclusive=False)
        self.beta_1 = check_float("beta_1", beta_1, minimum=0.0, maximum=1.0, max_inclusive=False)
        self.beta_2 = check_float("beta_2", beta_2, minimum=0.0, maximum=1.0, max_inclusive=False)
        self.tau = check_float("tau", tau, minimum=0.0, min_inclusive=False)
        self._m: dict[str, np.ndarray] = {}
        self._v: dict[str, np.ndarray] = {}

    def options(self) -> dict[str, Any]:
        return {
            **super().options(),
            "eta": self.eta,
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "tau": self.tau,
        }

    def finish_round(
        self, server_round: int, global_weights: Weights, aggregate: Weights
    ) -> Weights:
        new_global, self._m, self._v = adaptive_step(
            self.rule,
            global_weights,
            aggregate,
            self._m,
            self._v,
            eta=self.eta,
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            tau=self.tau,
        )
        return new_global

    def state_dict(self) -> dict[str, Any]:
        return {"m": dict(self._m), "v": dict(self._v)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._m = {k: np.asarray(a, np.float64) for k, a in state.get("m", {}).items()}
        self._v = {k: np.asarray(a, np.float64) for k, a in state.get("v", {}).items()}


class FedAdagrad(FedOpt):
    """Server-side Adagrad on the pseudo-gradient."""

    name = "fedadagrad"
    rule = "adagrad"


class FedAdam(FedOpt):
    """Server-side Adam (without bias correction) on the pseudo-gradient."""

    name = "fedadam"
    rule = "adam"


class FedYogi(FedOpt):
    """Server-side Yogi on the pseudo-gradient: Adam whose v grows additively, not by decay."""

    name = "fedyogi"
    rule = "yogi"
