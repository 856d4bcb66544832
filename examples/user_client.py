"""A user's own client component in the federation: builds its trainer, joins the run.

The Kubeflow-native way to bring your own training code: a KFP component of yours, in
your image (``FROM`` the fl-kubeflow image plus your package), that builds a trainer and
calls ``fl_kubeflow.tasks.join_federation``. ``build_pipeline`` and
``build_federated_training`` take it as ``client_component=`` and pass it the inputs of
``fl_kubeflow_kfp.pipeline.CLIENT_CONTRACT``; its other inputs need defaults.

This one trains the built-in 2NN on its digits shard with options of its own (one local
epoch, Adam); swap ``build_trainer("keras", ...)`` for your factory, e.g.
``build_trainer("my_package.models:make_trainer", options)``, or any object with the
``Trainer`` methods (docs/trainers.md). Compile the example pipeline with it::

    python examples/user_client.py --image registry.example.com/you/fl-kubeflow:0.1.0

No ``from __future__ import annotations``: KFP reads the annotations as objects.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fl_kubeflow_kfp.components import DEFAULT_IMAGE
from kfp import compiler, dsl
from kfp.dsl import Metrics, Output
from kfp.dsl.python_component import PythonComponent


def my_client(
    run_id: str,
    client_id: int,
    num_clients: int,
    server_address: str,
    port: int,
    retry_timeout: float,
    metrics: Output[Metrics],
    local_epochs: int = 1,
    learning_rate: float = 0.005,
):
    """Train on this client's digits shard with my own options, as one federated client.

    Args:
        run_id: The pipeline run UUID; names the server's Service.
        client_id: This client's id, 0..N-1.
        num_clients: Clients in the run (N).
        server_address: Server URL; empty means the run's in-cluster Service.
        port: The server's port.
        retry_timeout: Seconds to keep retrying an unreachable server.
        local_epochs: Epochs trained per round.
        learning_rate: Adam's learning rate.

    Returns:
        metrics: This client's final local evaluation.
    """
    from fl_kubeflow.tasks import integer_params, join_federation
    from fl_kubeflow.training.factory import build_trainer
    from fl_kubeflow.training.options import TrainerOptions

    # KFP may deliver an integer as an integral float (8080.0).
    client_id, num_clients, port, local_epochs = integer_params(
        client_id=client_id, num_clients=num_clients, port=port, local_epochs=local_epochs
    )
    options = TrainerOptions(
        dataset="digits",
        client_id=client_id,
        num_clients=num_clients,
        local_epochs=local_epochs,
        optimizer="adam",
        learning_rate=learning_rate,
    )
    result = join_federation(
        build_trainer("keras", options),
        run_id=run_id,
        client_id=client_id,
        server_address=server_address,
        port=port,
        retry_timeout=retry_timeout,
    )
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)


def build_client(image: str = DEFAULT_IMAGE) -> PythonComponent:
    """``my_client`` as a component in ``image`` (one with fl-kubeflow and kfp installed)."""
    return dsl.component(my_client, base_image=image, install_kfp_package=False)


def main(argv: Sequence[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere
    from user_pipeline import build_user_pipeline

    parser = argparse.ArgumentParser(description="Compile the user pipeline with my_client.")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="the image of every step")
    parser.add_argument("--output", type=Path, default=Path("user_client_pipeline.yaml"))
    args = parser.parse_args(argv)
    pipeline = build_user_pipeline(args.image, client_component=build_client(args.image))
    compiler.Compiler().compile(pipeline, package_path=str(args.output))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
