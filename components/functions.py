"""The bodies of the KFP components: thin calls into ``fl_kubeflow.tasks``.

KFP copies each function's source into the pipeline YAML and runs it in the image with
``from kfp.dsl import *`` and ``from typing import *`` in scope, so a function may use
nothing from this module: every import happens inside the body. Docstrings become the
component and parameter descriptions shown in the KFP UI (``Returns:`` describes the
output artifacts).

No ``from __future__ import annotations`` here: KFP reads the annotations as objects.
Defaults must be literals (the source is copied); they match ``fl_kubeflow.defaults``,
which tests check. The pipeline passes every value anyway.
"""

from kfp.dsl import HTML, Input, Markdown, Metrics, Model, Output


def client_ids(num_clients: int) -> list[int]:
    """List the client ids 0..num_clients-1 for the ParallelFor over clients.

    Args:
        num_clients: Number of federated clients (N >= 1).

    Returns:
        Output: The ids [0, 1, ..., N-1].
    """
    from fl_kubeflow.tasks import client_ids as ids

    return ids(num_clients)  # accepts an integral float, as every integer input here


def fl_server(
    run_id: str,
    num_clients: int,
    num_rounds: int,
    trained_model: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    summary: Output[Markdown],
    min_clients: int = 0,
    join_timeout: float = 900.0,
    round_timeout: float = 600.0,
    strategy: str = "fedavg",
    strategy_options: str = "{}",
    port: int = 8080,
    trainer: str = "keras",
    dataset: str = "digits",
    data_locations: str = "[]",
    partition: str = "iid",
    model: str = "mlp",
    local_epochs: int = 2,
    batch_size: int = 16,
    learning_rate: float = 0.05,
    optimizer: str = "sgd",
    seed: int = 0,
    checkpoint_dir: str = "",
    max_restarts: int = 2,
    initial_model: Input[Model] | None = None,
):
    """Run the federated-learning aggregation server for one pipeline run.

    In a pod it first creates the Service fl-<run_id> that the clients reach it through
    (and deletes it at the end). It waits for num_clients clients, runs num_rounds rounds
    of aggregation, then exports the final model.

    Args:
        run_id: The pipeline run UUID (pass dsl.PIPELINE_JOB_ID_PLACEHOLDER whole).
        num_clients: Clients expected to join (N).
        num_rounds: Training rounds (R).
        min_clients: Fewest updates a round may close with; 0 means all N.
        join_timeout: Seconds to wait for all clients to join.
        round_timeout: Seconds a round waits for updates before closing with those that came.
        strategy: Aggregation strategy: fedavg, fedavgm, fedprox, fedadam, fedyogi,
            fedadagrad, fedmedian, fedtrimmedavg, krum or multikrum.
        strategy_options: The strategy's options as a JSON object, e.g. {"eta": 0.03}.
        port: TCP port the server listens on and the Service exposes.
        trainer: The clients' trainer: keras exports model.keras; torch or MODULE:FACTORY
            export weights.safetensors only (named in trained_model's metadata).
        dataset: Dataset the clients train on; gives the exported model's input shape.
        data_locations: The clients' data files as a JSON list, one per client (their format
            only: a table's shapes are read from the weights); [] when dataset is used.
        partition: How the clients split the dataset (shown in the report).
        model: Model the clients train (mlp, cnn or a .keras path); rebuilt for export.
        local_epochs: Epochs each client trains per round (shown in the report).
        batch_size: Clients' local batch size (shown in the report).
        learning_rate: Clients' local learning rate (shown in the report).
        optimizer: Clients' local optimizer (shown in the report).
        seed: Seed for data split and initial weights (shown in the report).
        checkpoint_dir: Folder on a mounted volume to checkpoint every round into (a
            subfolder per run) and resume from; empty: no checkpoints.
        max_restarts: Times a crashed server process (killed, out of memory) is restarted
            inside this pod from the checkpoint; needs checkpoint_dir.
        initial_model: Optional starting weights: the trained_model of an earlier run.

    Returns:
        trained_model: Folder with weights.safetensors, history.json and (keras trainer)
            model.keras; metadata says which trainer and framework.
        metrics: Final evaluation accuracy and loss, rounds completed, clients.
        report: HTML report with learning curves and a per-round table.
        summary: Markdown summary of the run.
    """
    import logging

    from fl_kubeflow.tasks import integer_params, run_server_task

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # KFP may deliver an integer parameter as an integral float (8080.0): see tasks.params.
    (num_clients, num_rounds, min_clients, port, local_epochs, batch_size, seed, max_restarts) = (
        integer_params(
            num_clients=num_clients,
            num_rounds=num_rounds,
            min_clients=min_clients,
            port=port,
            local_epochs=local_epochs,
            batch_size=batch_size,
            seed=seed,
            max_restarts=max_restarts,
        )
    )
    result = run_server_task(
        run_id=run_id,
        num_clients=num_clients,
        num_rounds=num_rounds,
        model_dir=trained_model.path,
        min_clients=min_clients,
        join_timeout=join_timeout,
        round_timeout=round_timeout,
        strategy=strategy,
        strategy_options=strategy_options,
        port=port,
        trainer=trainer,
        dataset=dataset,
        data_locations=data_locations,
        model=model,
        initial_model=initial_model.path if initial_model is not None else None,
        checkpoint_dir=checkpoint_dir,
        max_restarts=max_restarts,
        report_path=report.path,
        summary_path=summary.path,
        params={
            "num_clients": num_clients,
            "num_rounds": num_rounds,
            "min_clients": min_clients,
            "join_timeout": join_timeout,
            "round_timeout": round_timeout,
            "strategy": strategy,
            "strategy_options": strategy_options,
            "trainer": trainer,
            "dataset": dataset,
            "data_locations": data_locations,
            "partition": partition,
            "model": model,
            "local_epochs": local_epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "optimizer": optimizer,
            "seed": seed,
            "initial_model": initial_model.uri if initial_model is not None else "",
        },
    )
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    trained_model.metadata.update(result.model_metadata)


def fl_client(
    run_id: str,
    client_id: int,
    num_clients: int,
    metrics: Output[Metrics],
    server_address: str = "",
    port: int = 8080,
    trainer: str = "keras",
    dataset: str = "digits",
    partition: str = "iid",
    model: str = "mlp",
    local_epochs: int = 2,
    batch_size: int = 16,
    learning_rate: float = 0.05,
    optimizer: str = "sgd",
    seed: int = 0,
    data_locations: str = "[]",
    label_column: str = "label",
    feature_columns: str = "",
    data_timeout: float = 60.0,
    retry_timeout: float = 900.0,
    round_wait_timeout: float = 3600.0,
):
    """Train as one federated client until the server says the run is finished.

    Args:
        run_id: The pipeline run UUID; names the server's Service fl-<run_id>.
        client_id: This client's index 0..N-1; also picks its data shard.
        num_clients: Clients in the run (N), to partition the dataset.
        server_address: Server URL override; empty means this run's in-cluster Service.
        port: Server port when the address is derived from the run id.
        trainer: keras, torch, or MODULE:FACTORY: a factory(options) -> Trainer importable
            in the image (docs/trainers.md).
        dataset: digits (bundled), mnist, fashion_mnist, cifar10, or a file with {client_id}:
            npz:/csv:/parquet: and a path, http(s):// or s3:// location (docs/data.md).
        partition: iid or dirichlet:ALPHA.
        model: mlp, cnn, or a path to a .keras model.
        local_epochs: Epochs trained per round.
        batch_size: Local batch size.
        learning_rate: Local learning rate.
        optimizer: sgd (momentum 0.9) or adam.
        seed: Seed for data split and initial weights; the same for every client.
        data_locations: JSON list of data files, one per client (this client reads entry
            client_id); replaces dataset. [] to use dataset.
        label_column: A table's column of integer class ids.
        feature_columns: A table's feature columns, comma-separated; empty: all the others.
        data_timeout: Seconds each remote read of this client's data may take per attempt.
        retry_timeout: Seconds to keep retrying an unreachable server (it may start later).
        round_wait_timeout: Longest wait in seconds for the next round to open.

    Returns:
        metrics: This client's final evaluation accuracy and loss, and rounds trained.
    """
    import logging

    from fl_kubeflow.tasks import integer_params, run_client_task

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # KFP may deliver an integer parameter as an integral float (8080.0): see tasks.params.
    client_id, num_clients, port, local_epochs, batch_size, seed = integer_params(
        client_id=client_id,
        num_clients=num_clients,
        port=port,
        local_epochs=local_epochs,
        batch_size=batch_size,
        seed=seed,
    )
    result = run_client_task(
        run_id=run_id,
        client_id=client_id,
        num_clients=num_clients,
        server_address=server_address,
        port=port,
        trainer=trainer,
        dataset=dataset,
        partition=partition,
        model=model,
        local_epochs=local_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        optimizer=optimizer,
        seed=seed,
        data_locations=data_locations,
        label_column=label_column,
        feature_columns=feature_columns,
        data_timeout=data_timeout,
        retry_timeout=retry_timeout,
        round_wait_timeout=round_wait_timeout,
    )
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)


def fl_cleanup(run_id: str):
    """Delete this run's server Service if it is still there (the pipeline's exit handler).

    Args:
        run_id: The pipeline run UUID (pass dsl.PIPELINE_JOB_ID_PLACEHOLDER whole).
    """
    import logging

    from fl_kubeflow.tasks import run_cleanup_task

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run_cleanup_task(run_id)
