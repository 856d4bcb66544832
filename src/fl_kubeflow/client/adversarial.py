"""A Byzantine client for robustness experiments: wraps any trainer and corrupts its updates.

Attacks (``scale`` is their strength):

* ``noise``: the global model plus Gaussian garbage of standard deviation ``scale``
  (the trained result is discarded): a broken or hostile client.
* ``scale``: the global model plus ``scale`` times the honest change (model
  replacement / boosting, Bagdasaryan et al. 2020).
* ``sign-flip``: the global model minus ``scale`` times the honest change.

The reported example count and metrics stay honest, and evaluation is honest, so
the run's federated accuracy measures the damage to the global model only.

Run as a client process (same options as ``fl-kubeflow client`` plus the attack)::

    python -m fl_kubeflow.client.adversarial --server URL --client-id 4 --num-clients 5 \\
        --attack noise --attack-scale 10
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from fl_kubeflow.client.trainer import EvaluateResult, FitResult, Trainer
from fl_kubeflow.wire import Weights

log = logging.getLogger("fl_kubeflow.client")

ATTACKS = ("noise", "scale", "sign-flip")


def corrupt(
    trained: Weights, global_weights: Weights, attack: str, scale: float, rng: np.random.Generator
) -> Weights:
    """The update a Byzantine client sends instead of ``trained`` (dtypes kept)."""
    out: Weights = {}
    for name, g in global_weights.items():
        g64 = g.astype(np.float64)
        if attack == "noise":
            value = g64 + scale * rng.standard_normal(g.shape)
        elif attack == "scale":
            value = g64 + scale * (trained[name].astype(np.float64) - g64)
        elif attack == "sign-flip":
            value = g64 - scale * (trained[name].astype(np.float64) - g64)
        else:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
        out[name] = value.astype(g.dtype) if np.issubdtype(g.dtype, np.floating) else g.copy()
    return out


class AdversarialTrainer:
    """Wraps ``trainer``; every fit result is replaced by ``corrupt``'s."""

    def __init__(self, trainer: Trainer, attack: str = "noise", scale: float = 10.0, seed: int = 0):
        if attack not in ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
        self.trainer = trainer
        self.attack = attack
        self.scale = float(scale)
        self.rng = np.random.default_rng([seed, 0xBAD])

    def initial_weights(self) -> Weights:
        return self.trainer.initial_weights()

    def fit(self, weights: Weights, server_round: int, config: dict[str, Any]) -> FitResult:
        result = self.trainer.fit(weights, server_round, config)
        bad = corrupt(result.weights, weights, self.attack, self.scale, self.rng)
        log.warning(
            "round %d: sending a %s update (scale %g)", server_round, self.attack, self.scale
        )
        return FitResult(bad, result.num_examples, result.metrics)

    def evaluate(self, weights: Weights, server_round: int) -> EvaluateResult | None:
        return self.trainer.evaluate(weights, server_round)


def build_parser() -> argparse.ArgumentParser:
    from fl_kubeflow.cli.client_cmd import add_client_timeouts, add_training_options
    from fl_kubeflow.cli.options import non_negative_int, positive_int

    parser = argparse.ArgumentParser(
        prog="python -m fl_kubeflow.client.adversarial",
        description="A Byzantine federated client (robustness experiments only).",
    )
    parser.add_argument("--server", required=True)
    parser.add_argument("--client-id", type=non_negative_int, default=0)
    parser.add_argument("--num-clients", type=positive_int, default=1)
    parser.add_argument("--trainer", default="keras", choices=["keras", "numpy-delta"])
    add_training_options(parser)
    add_client_timeouts(parser)
    parser.add_argument("--summary", default=None, help="write the client summary here as JSON")
    parser.add_argument("--attack", default="noise", choices=ATTACKS)
    parser.add_argument("--attack-scale", type=float, default=10.0)
    # The numpy-delta trainer's options, at the CLI's defaults (build_trainer reads them).
    parser.set_defaults(delta=0.0, num_examples=1, shapes=[(16, 8), (8,)], fit_delay=0.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from fl_kubeflow import auth, files
    from fl_kubeflow.cli.client_cmd import build_trainer
    from fl_kubeflow.client.federated_client import FederatedClient

    args = build_parser().parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trainer = AdversarialTrainer(build_trainer(args), args.attack, args.attack_scale, args.seed)
    client = FederatedClient(
        args.server,
        str(args.client_id),
        trainer,
        retry_timeout=args.retry_timeout,
        round_wait_timeout=args.round_wait_timeout,
        headers=auth.auth_headers(auth.read_token()),
    )
    summary = client.run()
    if args.summary:
        files.write_json(args.summary, summary.to_dict())
    print(json.dumps(summary.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
