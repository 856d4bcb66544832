"""``python -m fl_kubeflow.cli.adversarial_cmd``: a Byzantine client process.

For robustness experiments only (benchmarks/robustness.py): the options of
``fl-kubeflow client`` that a benchmark run needs, plus the attack
(``fl_kubeflow.client.adversarial``)::

    python -m fl_kubeflow.cli.adversarial_cmd --server URL --client-id 4 --num-clients 5 \\
        --attack noise --attack-scale 10
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from fl_kubeflow.cli.client_cmd import add_client_timeouts, add_training_options, build_trainer
from fl_kubeflow.cli.options import non_negative_int, positive_int
from fl_kubeflow.client.adversarial import ATTACKS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fl_kubeflow.cli.adversarial_cmd",
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
    parser.set_defaults(
        delta=0.0,
        num_examples=1,
        shapes=[(16, 8), (8,)],
        fit_delay=0.0,
        eval_delay=0.0,
        slow_rounds=None,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from fl_kubeflow import auth, files
    from fl_kubeflow.client.adversarial import AdversarialTrainer
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
