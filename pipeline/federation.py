"""The tasks of one federation, added to whichever pipeline holds them.

A federation is a server task (two under ``dsl.If``/``dsl.Else``: with and without
checkpoints, because ``mount_pvc`` takes no empty name) and one client task per client id,
all running at once. ``fl_pipeline`` puts them inside an exit handler; ``federated_training``
returns the server's outputs through ``dsl.OneOf``. The client may be the built-in one or a
user's own component: :data:`CLIENT_CONTRACT` lists what the pipeline passes it.
"""

import math
from collections.abc import Mapping
from typing import Any

from fl_kubeflow_kfp.components import FLComponents
from fl_kubeflow_kfp.pipeline.resources import FIELDS
from kfp import dsl, kubernetes
from kfp.dsl import base_component

from fl_kubeflow import defaults
from fl_kubeflow.kube.naming import DEFAULT_PORT, SERVER_ROLE, SERVER_ROLE_LABEL
from fl_kubeflow.kube.service import NODE_IP_ENV
from fl_kubeflow.tasks.durations import task_seconds
from fl_kubeflow.tasks.server_task import DEFAULT_MAX_RESTARTS

CLIENT_ROLE = "client"
NAMESPACE_ENV = "POD_NAMESPACE"
CHECKPOINT_MOUNT = "/fl-checkpoint"
# Where a server pipeline's TLS Secret and a client pipeline's credential Secret are mounted.
TLS_MOUNT = "/fl-tls"
CREDENTIAL_MOUNT = "/fl-credential"
# The server pipeline's exposure and access parameters, passed to the server as they are.
ACCESS_OPTIONS = (
    "service_name",
    "service_type",
    "node_port",
    "tls_secret",
    "allow_plaintext",
    "credentials_secret",
    "credentials_reload",
)
SERVER_RETRIES = 3
SERVER_RETRY_BACKOFF = 10  # seconds before the first retry, doubled for each next one
# The Secret a run's clients read object-storage credentials from (docs/data.md): its keys
# become the same-named variables, each optional so a run without the Secret still starts.
DATA_CREDENTIALS = "fl-data-credentials"
DATA_CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3")

# The inputs the pipeline passes a client component, with their KFP types. A user's
# component must take all of them and may take others only with defaults.
CLIENT_CONTRACT: Mapping[str, str] = {
    "run_id": "String",
    "client_id": "Integer",
    "num_clients": "Integer",
    "server_address": "String",
    "port": "Integer",
    "retry_timeout": "Float",
}
# What the built-in client (and the server, for its export) takes besides the contract.
TRAINING_OPTIONS = (
    "trainer",
    "dataset",
    "partition",
    "model",
    "local_epochs",
    "batch_size",
    "learning_rate",
    "optimizer",
    "seed",
    "data_locations",
)
# The built-in client's own data options (the server reads none of them).
CLIENT_DATA_OPTIONS = ("label_column", "feature_columns", "data_timeout")


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


def check_retry_deadline(retry_deadline: int | None) -> int:
    """The retry deadline to compile in: the default for ``None``, else whole seconds >= 1."""
    if retry_deadline is None:
        return server_retry_deadline()
    if isinstance(retry_deadline, bool) or not isinstance(retry_deadline, int):
        raise ValueError(f"retry_deadline must be whole seconds, got {retry_deadline!r}")
    if retry_deadline < 1:
        raise ValueError(f"retry_deadline must be at least 1 second, got {retry_deadline}")
    return retry_deadline


def check_client_component(component: Any) -> base_component.BaseComponent:
    """Refuse a client component that cannot take what the pipeline passes (at build time).

    The error names every missing input, input of the wrong type, and input without a
    default that the pipeline would not pass.
    """
    if not isinstance(component, base_component.BaseComponent):
        raise TypeError(
            f"client_component must be a KFP component (@dsl.component or loaded from YAML), "
            f"got {component!r}"
        )
    name = component.component_spec.name
    inputs = component.component_spec.inputs or {}
    problems = []
    missing = [key for key in CLIENT_CONTRACT if key not in inputs]
    if missing:
        problems.append(f"lacks the inputs {', '.join(missing)}")
    wrong = [
        f"{key} is {inputs[key].type}, not {kind}"
        for key, kind in CLIENT_CONTRACT.items()
        if key in inputs and inputs[key].type != kind
    ]
    if wrong:
        problems.append("has " + "; ".join(wrong))
    unfed = [
        key
        for key, spec in inputs.items()
        if key not in CLIENT_CONTRACT and spec.default is None and not spec.optional
    ]
    if unfed:
        problems.append(f"requires inputs the pipeline does not pass: {', '.join(unfed)}")
    if problems:
        contract = ", ".join(f"{k}: {v}" for k, v in CLIENT_CONTRACT.items())
        raise ValueError(
            f"client component {name!r} {'; '.join(problems)} (a client component takes "
            f"{contract}, and other inputs only with defaults; docs/kubeflow.md)"
        )
    return component


def _resources(task: dsl.PipelineTask, resources: Mapping[str, Any]) -> None:
    """Set (request, limit) for CPU and memory from the pipeline's resource parameters."""
    task.set_cpu_request(resources["cpu_request"]).set_cpu_limit(resources["cpu_limit"])
    task.set_memory_request(resources["memory_request"])
    task.set_memory_limit(resources["memory_limit"])
    # kfp 2.17's resource setters do not register their parameters with the task (its image
    # setter does), so a task inside a condition, loop or exit handler would reference
    # inputs its enclosing DAGs never declare: register them, as set_container_image does.
    task.register_pipeline_channels(list(resources.values()))


def pod_resources(p: Mapping[str, Any], role: str) -> dict[str, Any]:
    """The ``role``'s four resource parameters of the pipeline, by PodResources field."""
    return {name: p[f"{role}_{name}"] for name in FIELDS}


def namespace_env(task: dsl.PipelineTask) -> None:
    """Expose the pod's namespace (the service-account namespace file is the first source)."""
    kubernetes.use_field_path_as_env(task, NAMESPACE_ENV, "metadata.namespace")


def add_servers(
    comps: FLComponents,
    p: Mapping[str, Any],
    retry_deadline: int,
    *,
    access: bool = False,
    **initial: Any,
) -> tuple[dsl.PipelineTask, dsl.PipelineTask]:
    """The checkpointed and the plain server task, each under its condition on checkpoint_pvc.

    ``p`` holds the pipeline's parameters by name; ``initial`` is ``initial_model=...`` or
    nothing. ``access`` (the server pipeline) passes :data:`ACCESS_OPTIONS` and mounts the
    TLS Secret. Returns (with checkpoints, without): exactly one of them runs.
    """

    def server(checkpointed: bool) -> dsl.PipelineTask:
        extra = {name: p[name] for name in ACCESS_OPTIONS} if access else {}
        if access:
            extra["tls_dir"] = TLS_MOUNT
        task = comps.server(
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            num_clients=p["num_clients"],
            num_rounds=p["num_rounds"],
            min_clients=p["min_clients"],
            join_timeout=p["join_timeout"],
            round_timeout=p["round_timeout"],
            strategy=p["strategy"],
            strategy_options=p["strategy_options"],
            secure_aggregation=p["secure_aggregation"],
            secagg_options=p["secagg_options"],
            mode=p["mode"],
            async_options=p["async_options"],
            port=DEFAULT_PORT,
            **{name: p[name] for name in TRAINING_OPTIONS},
            checkpoint_dir=CHECKPOINT_MOUNT if checkpointed else "",
            max_restarts=DEFAULT_MAX_RESTARTS,
            **extra,
            **initial,
        )
        task.set_display_name("fl-server")
        if access:
            # Optional: a ClusterIP server may serve plain HTTP; the task refuses beyond it.
            kubernetes.use_secret_as_volume(
                task, secret_name=p["tls_secret"], mount_path=TLS_MOUNT, optional=True
            )
            # A NodePort answers on every node: the server's own node IP is one to hand out.
            kubernetes.use_field_path_as_env(task, NODE_IP_ENV, "status.hostIP")
        if checkpointed:
            kubernetes.mount_pvc(task, pvc_name=p["checkpoint_pvc"], mount_path=CHECKPOINT_MOUNT)
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
        _resources(task, pod_resources(p, "server"))
        kubernetes.add_pod_label(task, SERVER_ROLE_LABEL, SERVER_ROLE)
        namespace_env(task)
        return task

    with dsl.If(p["checkpoint_pvc"] != "", name="with-checkpoints"):
        checkpointed = server(True)
    with dsl.Else(name="without-checkpoints"):
        plain = server(False)
    return checkpointed, plain


def add_clients(
    comps: FLComponents,
    p: Mapping[str, Any],
    ids: dsl.PipelineTask,
    client_component: base_component.BaseComponent | None = None,
) -> dsl.PipelineTask:
    """One client task per id of ``ids`` (the client-ids task), all at once.

    The built-in client also gets the training options; a user's ``client_component``
    gets only :data:`CLIENT_CONTRACT` (its trainer knows its own data and model).
    """
    # No parallelism limit: synchronous FL needs every client running at once.
    with dsl.ParallelFor(ids.output, name="clients") as client_id:
        contract = dict(
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            client_id=client_id,
            num_clients=p["num_clients"],
            server_address=p["server_address"],
            port=DEFAULT_PORT,
        )
        # Clients may start long before the server pod is scheduled.
        if client_component is None:
            options = {name: p[name] for name in (*TRAINING_OPTIONS, *CLIENT_DATA_OPTIONS)}
            client = comps.client(**contract, **options, retry_timeout=p["join_timeout"])
        else:
            client = client_component(**contract, retry_timeout=p["join_timeout"])
        client_pod(client, p)
        namespace_env(client)
    return client


def client_pod(client: dsl.PipelineTask, p: Mapping[str, Any]) -> None:
    """What every client task gets: no caching, data credentials, resources, role label."""
    client.set_display_name("fl-client")
    client.set_caching_options(False)
    # Credentials come from a Secret, never a parameter; only its name is one. A
    # user's client component gets them too: its trainer may read the same storage.
    kubernetes.use_secret_as_env(
        client,
        secret_name=p["data_credentials"],
        secret_key_to_env={key: key for key in DATA_CREDENTIAL_KEYS},
        optional=True,
    )
    _resources(client, pod_resources(p, "client"))
    kubernetes.add_pod_label(client, SERVER_ROLE_LABEL, CLIENT_ROLE)
