"""FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks").

The server side is FedAvg; the difference is in the clients' local objective,
``loss(w) + proximal_mu / 2 * ||w - w_global||^2``, which keeps local models near
the global one on heterogeneous data. The server sends ``proximal_mu`` with every
model in the round's config; ``KerasTrainer`` applies it (see its ``fit``).
"""

from __future__ import annotations

from typing import Any

from fl_kubeflow.checks import check_float
from fl_kubeflow.strategies.fedavg import FedAvg


class FedProx(FedAvg):
    """FedAvg whose clients add a proximal term.

    Args:
        proximal_mu: Weight of the proximal term (mu >= 0; 0 is FedAvg). Li et al.
            tried 0.001, 0.01, 0.1 and 1.
    """

    name = "fedprox"

    def __init__(self, *, proximal_mu: float = 0.01, **common: Any) -> None:
        super().__init__(**common)
        self.proximal_mu = check_float("proximal_mu", proximal_mu, minimum=0.0)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "proximal_mu": self.proximal_mu}

    def configure_fit(self, server_round: int) -> dict[str, Any]:
        return {**super().configure_fit(server_round), "proximal_mu": self.proximal_mu}
