"""The federated-learning pipeline: one server task and N client tasks, running at once.

Shape (inside an exit handler that deletes the run's Service whatever happens)::

    client-ids ──> ParallelFor(ids, no parallelism limit) ──> fl-client x N
    fl-server   (no data dependency on the clients: starts at the same time)

The server creates the Service ``fl-<run uuid>`` selecting its own pod by the label
``pipeline/runid`` (put on every pod by KFP) and ``fl-kubeflow/role=server`` (put on
the server pod here); clients derive the same name from the run UUID. With an initial
model URI, an importer feeds the server (a ``dsl.If``/``dsl.Else`` pair of server tasks,
because an importer cannot take an empty URI).

``build_pipeline(image)`` builds it for a chosen image; ``compile_pipeline`` writes YAML.
No ``from __future__ import annotations``: KFP reads the pipeline's annotations as objects.
"""

import math
from dataclasses import dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import Any

from fl_kubeflow_kfp.components import DEFAULT_IMAGE, FLComponents, build_components
from kfp import compiler, dsl, kubernetes
from kfp.dsl import Model
from kubernetes.utils import parse_quantity

from fl_kubeflow import defaults
from fl_kubeflow.kube.naming import DEFAULT_PORT, SERVER_ROLE, SERVER_ROLE_LABEL
from fl_kubeflow.tasks.durations import task_seconds
from fl_kubeflow.tasks.server_task import DEFAULT_MAX_RESTARTS

PIPELINE_NAME = "fl-kubeflow"
CLIENT_ROLE = "client"
NAMESPACE_ENV = "POD_NAMESPACE"
CHECKPOINT_MOUNT = "/fl-checkpoint"
SERVER_RETRIES = 3
SERVER_RETRY_BACKOFF = 10  # seconds before the first retry, doubled for each next one


def _quantity(name: str, value: str) -> Decimal:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a Kubernetes quantity such as '500m' or '2Gi'")
    try:
        return parse_quantity(value)
    except ValueError:
        raise ValueError(
            f"{name} {value!r} is not a Kubernetes quantity (e.g. '500m', '2', '512Mi', '4Gi')"
        ) from None


@dataclass(frozen=True)
class PodResources:
    """CPU and memory of one kind of pod, as Kubernetes quantities (``"500m"``, ``"4Gi"``).

    They are the defaults of the pipeline's ``<role>_cpu_request`` ... parameters: a run
    can change them in the KFP UI (the backend's driver resolves them when it makes the
    pod), and ``compile.py --server-cpu-request ...`` bakes other defaults in.
    """

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str

    def __post_init__(self) -> None:
        for kind in ("cpu", "memory"):
            request = _quantity(f"{kind}_request", getattr(self, f"{kind}_request"))
            limit = _quantity(f"{kind}_limit", getattr(self, f"{kind}_limit"))
            if request > limit:
                raise ValueError(
                    f"{kind} request {getattr(self, f'{kind}_request')!r} exceeds its limit "
                    f"{getattr(self, f'{kind}_limit')!r}: Kubernetes refuses such a pod"
                )


FIELDS = tuple(f.name for f in fields(PodResources))

# The server only averages weights, but exports model.keras through TensorFlow at the end;
# clients train. Raise these for CNNs on cifar10 or larger models; lower them to fit a
# small node (the requests of the server and N clients must fit at once, plus KFP's drivers).
SERVER_RESOURCES = PodResources("500m", "2", "1Gi", "4Gi")
CLIENT_RESOURCES = PodResources("1", "2", "1Gi", "4Gi")


def _resources(task: dsl.PipelineTask, resources: dict[str, Any]) -> None:
    """Set (request, limit) for CPU and memory from the pipeline's resource parameters."""
    task.set_cpu_request(resources["cpu_request"]).set_cpu_limit(resources["cpu_limit"])
    task.set_memory_request(resources["memory_request"])
    task.set_memory_limit(resources["memory_limit"])
    # kfp 2.17's resource setters do not register their parameters with the task (its image
    # setter does), so a task inside a condition, loop or exit handler would reference
    # inputs its enclosing DAGs never declare: register them, as set_container_image does.
    task.register_pipeline_channels(list(resources.values()))


def server_retry_deadline(
    num_rounds: int = defaults.NUM_ROUNDS,
    join_timeout: float = defaults.PIPELINE_JOIN_TIMEOUT,
    round_timeout: float = defaults.ROUND_TIMEOUT,
) -> int:
    """Seconds after its first start within which a checkpointed server step may be retried.

    Every pod (the first and each of the ``SERVER_RETRIES`` retries) may take the whole
    server task's time, in-pod restarts included, before it is lost; plus the backoffs.
    Argo forbids a retry after this deadline and stops one that reaches it, so it must
    cover the longest run: pass the largest ``num_rounds`` and timeouts runs will use.
    """
    per_pod = task_seconds(num_rounds, join_timeout, round_timeout, DEFAULT_MAX_RESTARTS)
    backoffs = sum(SERVER_RETRY_BACKOFF * 2**k for k in range(SERVER_RETRIES))
    return math.ceil((SERVER_RETRIES + 1) * per_pod + backoffs)


def _namespace_env(task: dsl.PipelineTask) -> None:
    # The service-account namespace file is the first source; this is the fallback.
    kubernetes.use_field_path_as_env(task, NAMESPACE_ENV, "metadata.namespace")


def build_pipeline(
    image: str = DEFAULT_IMAGE,
    server_resources: PodResources = SERVER_RESOURCES,
    client_resources: PodResources = CLIENT_RESOURCES,
    retry_deadline: int | None = None,
):
    """The pipeline function with every component using ``image``.

    ``server_resources`` and ``client_resources`` are the defaults of the pipeline's
    resource parameters (``server_cpu_request`` ... ``client_memory_limit``).
    ``retry_deadline`` is the checkpointed server's retry deadline in seconds
    (default: :func:`server_retry_deadline` for the default rounds and timeouts).
    """
    comps: FLComponents = build_components(image)
    if retry_deadline is None:
        retry_deadline = server_retry_deadline()
    if isinstance(retry_deadline, bool) or not isinstance(retry_deadline, int):
        raise ValueError(f"retry_deadline must be whole seconds, got {retry_deadline!r}")
    if retry_deadline < 1:
        raise ValueError(f"retry_deadline must be at least 1 second, got {retry_deadline}")

    @dsl.pipeline(name=PIPELINE_NAME)
    def fl_pipeline(
        num_clients: int = defaults.NUM_CLIENTS,
        num_rounds: int = defaults.NUM_ROUNDS,
        trainer: str = defaults.TRAINER,
        dataset: str = defaults.DATASET,
        partition: str = defaults.PARTITION,
        model: str = defaults.MODEL,
        local_epochs: int = defaults.LOCAL_EPOCHS,
        batch_size: int = defaults.BATCH_SIZE,
        learning_rate: float = defaults.LEARNING_RATE,
        optimizer: str = defaults.OPTIMIZER,
        strategy: str = defaults.STRATEGY,
        strategy_options: str = "{}",
        min_clients: int = defaults.MIN_CLIENTS,
        round_timeout: float = defaults.ROUND_TIMEOUT,
        join_timeout: float = defaults.PIPELINE_JOIN_TIMEOUT,
        seed: int = defaults.SEED,
        server_address: str = "",
        initial_model_uri: str = "",
        checkpoint_pvc: str = "",
        server_cpu_request: str = server_resources.cpu_request,
        server_cpu_limit: str = server_resources.cpu_limit,
        server_memory_request: str = server_resources.memory_request,
        server_memory_limit: str = server_resources.memory_limit,
        client_cpu_request: str = client_resources.cpu_request,
        client_cpu_limit: str = client_resources.cpu_limit,
        client_memory_request: str = client_resources.memory_request,
        client_memory_limit: str = client_resources.memory_limit,
    ):
        """Federated learning: an aggregation server and N clients training together.

        Args:
            num_clients: Number of federated clients (N); one client pod each.
            num_rounds: Training rounds (R).
            trainer: What each client trains: keras or torch (built-in models), or
                MODULE:FACTORY, a factory in the image (docs/trainers.md).
            dataset: digits (bundled, offline), mnist, fashion_mnist, cifar10, or npz:PATH.
            partition: How the dataset is split across clients: iid or dirichlet:ALPHA.
            model: mlp, cnn, or a path to a .keras model inside the image.
            local_epochs: Epochs each client trains per round.
            batch_size: Clients' local batch size.
            learning_rate: Clients' local learning rate.
            optimizer: Clients' local optimizer: sgd (momentum 0.9) or adam.
            strategy: Aggregation strategy: fedavg, fedavgm, fedprox, fedadam, fedyogi,
                fedadagrad, fedmedian, fedtrimmedavg, krum, multikrum (docs/strategies.md).
            strategy_options: Strategy options as a JSON object, e.g. {"eta": 0.03} or
                {"fraction_fit": 0.5} or {"noise_multiplier": 1.0, "clipping_norm": 0.5}.
            min_clients: Fewest client updates a round may close with; 0 means all clients.
            round_timeout: Seconds a round waits for updates before closing with those that came.
            join_timeout: Seconds the server waits for all clients (and clients for the server).
            seed: Seed for the data split and the initial weights.
            server_address: Server URL for the clients; empty means this run's in-cluster Service.
            initial_model_uri: URI of an earlier run's trained_model to start from; empty: none.
            checkpoint_pvc: PVC to checkpoint every round on; a crashed server process is
                then restarted in its pod, a lost pod retried, both resuming. Empty: none.
            server_cpu_request: CPU the server pod requests, e.g. 500m (Kubernetes quantity).
            server_cpu_limit: Most CPU the server pod may use, e.g. 2.
            server_memory_request: Memory the server pod requests, e.g. 1Gi.
            server_memory_limit: Most memory the server pod may use, e.g. 4Gi.
            client_cpu_request: CPU each client pod requests, e.g. 1.
            client_cpu_limit: Most CPU each client pod may use, e.g. 2.
            client_memory_request: Memory each client pod requests, e.g. 1Gi.
            client_memory_limit: Most memory each client pod may use, e.g. 4Gi.
        """
        server_pod = dict(
            zip(
                FIELDS,
                (server_cpu_request, server_cpu_limit, server_memory_request, server_memory_limit),
                strict=True,
            )
        )
        client_pod = dict(
            zip(
                FIELDS,
                (client_cpu_request, client_cpu_limit, client_memory_request, client_memory_limit),
                strict=True,
            )
        )
        cleanup = comps.cleanup(run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        cleanup.set_display_name("fl-cleanup")
        cleanup.set_caching_options(False)
        _namespace_env(cleanup)

        with dsl.ExitHandler(cleanup, name="federated-run"):
            ids = comps.client_ids(num_clients=num_clients)
            ids.set_display_name("client-ids")

            def server(checkpointed: bool, **initial) -> None:
                task = comps.server(
                    run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                    num_clients=num_clients,
                    num_rounds=num_rounds,
                    min_clients=min_clients,
                    join_timeout=join_timeout,
                    round_timeout=round_timeout,
                    strategy=strategy,
                    strategy_options=strategy_options,
                    port=DEFAULT_PORT,
                    trainer=trainer,
                    dataset=dataset,
                    partition=partition,
                    model=model,
                    local_epochs=local_epochs,
                    batch_size=batch_size,
                    learning_rate=learning_rate,
                    optimizer=optimizer,
                    seed=seed,
                    checkpoint_dir=CHECKPOINT_MOUNT if checkpointed else "",
                    max_restarts=DEFAULT_MAX_RESTARTS,
                    **initial,
                )
                task.set_display_name("fl-server")
                if checkpointed:
                    kubernetes.mount_pvc(task, pvc_name=checkpoint_pvc, mount_path=CHECKPOINT_MOUNT)
                    # A replacement pod resumes from the checkpoint; clients wait for it.
                    # A pod deleted or evicted ("Error" to Argo) is retried; a crash inside
                    # it is restarted in the pod (max_restarts). The deadline runs from
                    # the first start: KFP's default (3600s) would forbid late retries.
                    task.set_retry(
                        num_retries=SERVER_RETRIES,
                        backoff_duration=f"{SERVER_RETRY_BACKOFF}s",
                        backoff_max_duration=f"{retry_deadline}s",
                    )
                task.set_caching_options(False)
                _resources(task, server_pod)
                kubernetes.add_pod_label(task, SERVER_ROLE_LABEL, SERVER_ROLE)
                _namespace_env(task)

            def server_with_checkpoints(**initial) -> None:
                # mount_pvc takes no empty name: one server task per case.
                with dsl.If(checkpoint_pvc != "", name="with-checkpoints"):
                    server(True, **initial)
                with dsl.Else(name="without-checkpoints"):
                    server(False, **initial)

            with dsl.If(initial_model_uri != "", name="with-initial-model"):
                imported = dsl.importer(
                    artifact_uri=initial_model_uri, artifact_class=Model, reimport=False
                )
                imported.set_display_name("initial-model")
                server_with_checkpoints(initial_model=imported.output)
            with dsl.Else(name="fresh-model"):
                server_with_checkpoints()

            # No parallelism limit: synchronous FL needs every client running at once.
            with dsl.ParallelFor(ids.output, name="clients") as client_id:
                client = comps.client(
                    run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                    client_id=client_id,
                    num_clients=num_clients,
                    server_address=server_address,
                    port=DEFAULT_PORT,
                    trainer=trainer,
                    dataset=dataset,
                    partition=partition,
                    model=model,
                    local_epochs=local_epochs,
                    batch_size=batch_size,
                    learning_rate=learning_rate,
                    optimizer=optimizer,
                    seed=seed,
                    # Clients may start long before the server pod is scheduled.
                    retry_timeout=join_timeout,
                )
                client.set_display_name("fl-client")
                client.set_caching_options(False)
                _resources(client, client_pod)
                kubernetes.add_pod_label(client, SERVER_ROLE_LABEL, CLIENT_ROLE)
                _namespace_env(client)

    return fl_pipeline


fl_pipeline = build_pipeline(DEFAULT_IMAGE)


def compile_pipeline(
    output: str | Path = "fl_pipeline.yaml",
    image: str = DEFAULT_IMAGE,
    server_resources: PodResources = SERVER_RESOURCES,
    client_resources: PodResources = CLIENT_RESOURCES,
    retry_deadline: int | None = None,
) -> Path:
    """Compile the pipeline into ``output``; the same inputs give the same bytes.

    ``image`` is every component's image; the resources are the defaults of the
    pipeline's resource parameters, ``retry_deadline`` the server's (see ``build_pipeline``).
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pipeline = build_pipeline(image, server_resources, client_resources, retry_deadline)
    compiler.Compiler().compile(pipeline, package_path=str(output))
    return output
