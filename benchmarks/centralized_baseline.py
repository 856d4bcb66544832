"""Centralized baseline: the federated setup's model trained on all the data in one place.

Uses the same dataset, partition, seed and local test splits as a federated run, so
the test set (the union of every client's local test split) is the one the
federation's example-weighted evaluation covers. Trains for ``rounds x local-epochs``
epochs with the same optimizer, learning rate and batch size, continuously (the
optimizer state is kept, as centralized training would), and evaluates after
every ``local-epochs`` epochs so the rows line up with federated rounds::

    .venv/bin/python benchmarks/centralized_baseline.py --rounds 10 --local-epochs 1 \\
        --clients 3 --partition iid

Only built-in datasets: an ``npz:`` federation has no single place the data could
be pooled.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from fl_kubeflow import defaults
from fl_kubeflow.training.datasets import ClientData, client_splits, load_full_dataset


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=defaults.LOCAL_EPOCHS)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--partition", default="iid", help="iid or dirichlet:<alpha>")
    parser.add_argument("--dataset", default=defaults.DATASET)
    parser.add_argument("--model", default=defaults.MODEL)
    parser.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE)
    parser.add_argument("--learning-rate", type=float, default=defaults.LEARNING_RATE)
    parser.add_argument("--optimizer", default=defaults.OPTIMIZER, choices=["sgd", "adam"])
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=defaults.SEED)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Train, print a per-round table, return 0."""
    args = _parser().parse_args(argv)
    if args.dataset.lower().startswith("npz:"):
        print("centralized baseline needs a built-in dataset, not npz:", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.local_epochs < 1:
        print("--rounds and --local-epochs must be >= 1", file=sys.stderr)
        return 2

    full = load_full_dataset(args.dataset)
    splits = client_splits(full.y, args.clients, args.partition, args.seed, args.test_fraction)
    train_idx = np.concatenate([train for train, _ in splits])
    test_idx = np.concatenate([test for _, test in splits])
    if len(test_idx) == 0:
        print("no test data: use --test-fraction > 0", file=sys.stderr)
        return 2
    data = ClientData(
        x_train=full.features(train_idx),
        y_train=full.y[train_idx],
        x_test=full.features(test_idx),
        y_test=full.y[test_idx],
        num_classes=full.info.num_classes,
        input_shape=full.info.input_shape,
        description=f"{full.name}: union of {args.clients} clients ({args.partition})",
    )

    # Imported here: TensorFlow takes seconds, and --help should not wait for it.
    from fl_kubeflow.training.keras_trainer import KerasTrainer, TrainerOptions

    options = TrainerOptions(
        dataset=args.dataset,
        partition=args.partition,
        model=args.model,
        num_clients=args.clients,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        optimizer=args.optimizer,
        momentum=args.momentum,
        seed=args.seed,
        test_fraction=args.test_fraction,
    )
    trainer = KerasTrainer(options, data=data)
    model = trainer.model
    rng = np.random.default_rng(args.seed)

    def evaluate() -> tuple[float, float]:
        result = model.evaluate(
            data.x_test, data.y_test, batch_size=256, verbose=0, return_dict=True
        )
        return float(result["loss"]), float(result["accuracy"])

    print(
        f"centralized baseline: {data.description}, model {args.model}, "
        f"{len(train_idx)} train / {len(test_idx)} test samples, "
        f"{args.rounds} x {args.local_epochs} epochs, {args.optimizer} lr={args.learning_rate} "
        f"batch={args.batch_size}, seed {args.seed}"
    )
    header = (
        f"{'round':>5} {'epochs':>6} {'train loss':>10} {'train acc':>9} "
        f"{'test loss':>9} {'test acc':>8} {'time s':>7}"
    )
    print(header)
    print("-" * len(header))
    loss, accuracy = evaluate()
    print(f"{0:>5} {0:>6} {'-':>10} {'-':>9} {loss:>9.4f} {accuracy:>8.4f} {0:>7.2f}")
    epochs = 0
    for round_number in range(1, args.rounds + 1):
        started = time.perf_counter()
        for _ in range(args.local_epochs):
            order = rng.permutation(len(data.x_train))
            history = model.fit(
                data.x_train[order],
                data.y_train[order],
                batch_size=args.batch_size,
                epochs=1,
                shuffle=False,
                verbose=0,
            )
            epochs += 1
        train_loss = history.history["loss"][-1]
        train_acc = history.history["accuracy"][-1]
        loss, accuracy = evaluate()
        elapsed = time.perf_counter() - started
        print(
            f"{round_number:>5} {epochs:>6} {train_loss:>10.4f} {train_acc:>9.4f} "
            f"{loss:>9.4f} {accuracy:>8.4f} {elapsed:>7.2f}"
        )
    print(f"final test accuracy {accuracy:.4f}, loss {loss:.4f} after {epochs} epochs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
