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

from kfp.dsl import HTML, Input, Markdown, Metrics, Model, Output, OutputPath


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
    server_address: OutputPath(str),
    min_clients: int = 0,
    join_timeout: float = 900.0,
    round_timeout: float = 600.0,
    strategy: str = "fedavg",
    strategy_options: str = "{}",
    secure_aggregation: bool = False,
    secagg_options: str = "",
    mode: str = "sync",
    async_options: str = "",
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
    service_name: str = "",
    service_type: str = "ClusterIP",
    node_port: int = 0,
    tls_dir: str = "",
    tls_secret: str = "",
    allow_plaintext: bool = False,
    credentials_secret: str = "",
    credentials_reload: float = 2.0,
    initial_model: Input[Model] | None = None,
):
    """Run the federated-learning aggregation server for one pipeline run.

    In a pod it first creates the Service fl-<run_id> (or service_name) that the clients
    reach it through (and deletes it at the end), and logs the address to hand them. It
    waits for num_clients clients, runs num_rounds rounds of aggregation, then exports the
    final model. Clients are known by their own credentials: those in the registry Secret
    credentials_secret, or (all-in-one run) one Secret per client that it makes itself.

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
        secure_aggregation: Aggregate with SecAgg+: the server learns only each round's sum.
        secagg_options: Secure aggregation options as name=value,... (bits, range,
            max_weight, dropout_fraction, corrupt_fraction, timeout); empty: defaults.
        mode: sync (rounds wait for their clients) or async (FedBuff: every K updates
            make a model version; num_rounds counts versions; docs/asynchronous.md).
        async_options: Asynchronous options as name=value,... (buffer_size,
            max_concurrency, staleness_exponent, max_staleness, server_learning_rate);
            empty: defaults.
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
        service_name: Name of the Service; empty: fl-<run_id>. A stable name (e.g. fl-server)
            lets the TLS certificate and the clients' credentials name it in advance.
        service_type: ClusterIP (other namespaces of the cluster), NodePort or LoadBalancer
            (other clusters; TLS required unless allow_plaintext).
        node_port: The node port of a NodePort or LoadBalancer Service; 0: Kubernetes picks.
        tls_dir: Folder of a mounted kubernetes.io/tls Secret (tls.crt, tls.key): HTTPS when
            both are there; empty or absent: plain HTTP.
        tls_secret: Name of that Secret, for messages only.
        allow_plaintext: Serve plain HTTP on a NodePort or LoadBalancer Service without TLS.
        credentials_secret: Secret in this namespace with the registry of client credentials
            (key registry.json, from fl-kubeflow credentials issue); re-read during the
            run, so revocations apply. Empty: issue one credential Secret per client id.
        credentials_reload: Seconds between reads of credentials_secret.
        initial_model: Optional starting weights: the trained_model of an earlier run.

    Returns:
        trained_model: Folder with weights.safetensors, history.json and (keras trainer)
            model.keras; metadata says which trainer and framework.
        metrics: Final evaluation accuracy and loss, rounds completed, clients.
        report: HTML report with learning curves and a per-round table.
        summary: Markdown summary of the run.
        server_address: The URL the clients reach the server at (with its scheme).
    """
    import logging

    from fl_kubeflow.tasks import integer_params, run_server_task

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # KFP may deliver an integer parameter as an integral float (8080.0): see tasks.params.
    integers = integer_params(
        num_clients=num_clients,
        num_rounds=num_rounds,
        min_clients=min_clients,
        port=port,
        local_epochs=local_epochs,
        batch_size=batch_size,
        seed=seed,
        max_restarts=max_restarts,
        node_port=node_port,
    )
    (num_clients, num_rounds, min_clients, port, local_epochs, batch_size, seed) = integers[:7]
    max_restarts, node_port = integers[7:]
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
        secure_aggregation=secure_aggregation,
        secagg_options=secagg_options,
        mode=mode,
        async_options=async_options,
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
        address_path=server_address,
        service_name=service_name,
        service_type=service_type,
        node_port=node_port,
        tls_dir=tls_dir,
        tls_secret=tls_secret,
        allow_plaintext=allow_plaintext,
        credentials_secret=credentials_secret,
        credentials_reload=credentials_reload,
        params={
            "num_clients": num_clients,
            "num_rounds": num_rounds,
            "min_clients": min_clients,
            "join_timeout": join_timeout,
            "round_timeout": round_timeout,
            "strategy": strategy,
            "strategy_options": strategy_options,
            "secure_aggregation": secure_aggregation,
            "secagg_options": secagg_options,
            "mode": mode,
            "async_options": async_options,
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
            "service_type": service_type,
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
    credential_dir: str = "",
):
    """Train as one federated client until the server says the run is finished.

    Args:
        run_id: The pipeline run UUID; names the server's Service fl-<run_id>.
        client_id: This client's index 0..N-1: picks its data shard, and is its id in the
            run unless credential_dir gives one.
        num_clients: Clients in the run (N), to partition the dataset.
        server_address: Server URL override; empty means the credential's server, else
            this run's in-cluster Service.
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
        credential_dir: Folder of this client's mounted credential Secret (client_id, token,
            optional ca.crt and server); empty: read this run's Secret for client_id.

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
        credential_dir=credential_dir,
    )
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)


def fl_cleanup(run_id: str, num_clients: int = 0, service_name: str = ""):
    """Delete this run's server Service and client credential Secrets if still there.

    The pipeline's exit handler: the server deletes its Service itself, this catches a
    server that could not.

    Args:
        run_id: The pipeline run UUID (pass dsl.PIPELINE_JOB_ID_PLACEHOLDER whole).
        num_clients: Clients of an all-in-one run, whose Secrets fl-<run_id>-cred-<i> go;
            0: none (a server pipeline's credentials are not the run's).
        service_name: The Service's name if not fl-<run_id>.
    """
    import logging

    from fl_kubeflow.tasks import integer_param, run_cleanup_task

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run_cleanup_task(run_id, integer_param("num_clients", num_clients), service_name=service_name)
