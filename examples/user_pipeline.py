"""A user's own pipeline with federated training as one of its steps.

    held-out-test-set ──────────────┐
    federated-training (N clients) ──┴──> evaluate(trained_model, test_set) -> accuracy

The data step makes a held-out test set (here: the digits samples no client trains on,
the union of the clients' local test splits), ``federated_training`` from the suite trains
the model with N clients, and the evaluation step loads its ``trained_model`` and reports
the accuracy on the held-out set as Metrics and as an output a further step could gate on
(e.g. deploy only above a threshold). Every step runs in the fl-kubeflow image (it has
numpy, Keras and the library); a user's own steps may use any image of theirs.

Compile it after ``pip install 'fl-kubeflow[kfp]'``::

    python examples/user_pipeline.py --image registry.example.com/you/fl-kubeflow:0.1.0

and upload ``user_pipeline.yaml`` in the KFP UI, or submit it with ``kfp.Client``.
No ``from __future__ import annotations``: KFP reads the annotations as objects.
"""

import argparse
from collections.abc import Sequence
from pathlib import Path

from fl_kubeflow_kfp.components import DEFAULT_IMAGE
from fl_kubeflow_kfp.pipeline import (
    CLIENT_RESOURCES,
    SERVER_RESOURCES,
    PodResources,
    build_federated_training,
)
from kfp import compiler, dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output
from kfp.dsl.base_component import BaseComponent
from kfp.dsl.python_component import PythonComponent

PIPELINE_NAME = "user-pipeline"


def held_out_test_set(num_clients: int, partition: str, seed: int, test_set: Output[Dataset]):
    """Write the digits samples no client trains on (their local test splits) as an npz.

    Args:
        num_clients: Clients of the federation, to split digits as they do.
        partition: The federation's partition (iid or dirichlet:ALPHA).
        seed: The federation's seed.

    Returns:
        test_set: An npz file with x (float32 images) and y (int64 labels).
    """
    import numpy as np

    from fl_kubeflow.training.datasets import client_splits, load_full_dataset
    from fl_kubeflow.training.options import TrainerOptions

    digits = load_full_dataset("digits")
    splits = client_splits(digits.y, num_clients, partition, seed, TrainerOptions.test_fraction)
    held_out = np.sort(np.concatenate([test for _, test in splits]))
    with open(test_set.path, "wb") as file:  # np.savez would append .npz to a path
        np.savez(file, x=digits.features(held_out), y=digits.y[held_out])
    test_set.metadata["examples"] = len(held_out)


def evaluate(
    trained_model: Input[Model], test_set: Input[Dataset], metrics: Output[Metrics]
) -> float:
    """Evaluate the federated model on the held-out test set.

    Args:
        trained_model: federated_training's trained_model (a folder with model.keras).
        test_set: The npz file of the data step.

    Returns:
        metrics: accuracy and examples on the held-out set.
        Output: The accuracy, for a later step to gate on.
    """
    import os

    import keras
    import numpy as np

    model = keras.models.load_model(os.path.join(trained_model.path, "model.keras"))
    with np.load(test_set.path) as data:
        x, y = data["x"], data["y"]
    predicted = np.argmax(model.predict(x, verbose=0), axis=1)
    accuracy = float(np.mean(predicted == y))
    metrics.log_metric("accuracy", accuracy)
    metrics.log_metric("examples", len(y))
    print(f"held-out accuracy {accuracy:.4f} on {len(y)} examples")
    return accuracy


def build_steps(image: str = DEFAULT_IMAGE) -> tuple[PythonComponent, PythonComponent]:
    """The data and the evaluation step as components in ``image`` (it has kfp installed)."""
    return tuple(  # type: ignore[return-value]
        dsl.component(step, base_image=image, install_kfp_package=False)
        for step in (held_out_test_set, evaluate)
    )


def build_user_pipeline(
    image: str = DEFAULT_IMAGE,
    server_resources: PodResources = SERVER_RESOURCES,
    client_resources: PodResources = CLIENT_RESOURCES,
    client_component: BaseComponent | None = None,
):
    """The pipeline with every step in ``image`` and the federation's pods sized as given.

    ``client_component`` is a client of your own in place of the built-in one
    (``examples/user_client.py``).
    """
    federated_training = build_federated_training(
        image, server_resources, client_resources, client_component=client_component
    )
    data_step, evaluation_step = build_steps(image)

    @dsl.pipeline(name=PIPELINE_NAME)
    def user_pipeline(num_clients: int = 2, num_rounds: int = 3, seed: int = 0):
        """Prepare a held-out test set, train federated on digits, evaluate the model.

        Args:
            num_clients: Federated clients (one pod each).
            num_rounds: Federated training rounds.
            seed: Seed of the data split and the initial weights.
        """
        data = data_step(num_clients=num_clients, partition="iid", seed=seed)
        data.set_display_name("held-out-test-set")
        training = federated_training(
            num_clients=num_clients, num_rounds=num_rounds, dataset="digits", seed=seed
        )
        training.set_display_name("federated-training")
        evaluation = evaluation_step(
            trained_model=training.outputs["trained_model"], test_set=data.outputs["test_set"]
        )
        evaluation.set_display_name("evaluate")

    return user_pipeline


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile the example user pipeline.")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="the fl-kubeflow image")
    parser.add_argument("--output", type=Path, default=Path("user_pipeline.yaml"))
    args = parser.parse_args(argv)
    compiler.Compiler().compile(build_user_pipeline(args.image), package_path=str(args.output))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
