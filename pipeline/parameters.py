"""The federation's parameters, written once for every pipeline that takes them.

``fl_pipeline`` (a whole run) and ``federated_training`` (a graph component for a user's
pipeline) take the same parameters with the same defaults and descriptions; KFP reads them
from a function's signature and docstring, so :func:`pipeline_function` makes such a
function from :func:`federation_parameters`. The body receives the values by name.

No ``from __future__ import annotations``: KFP reads the annotations as objects.
"""

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fl_kubeflow_kfp.pipeline.federation import DATA_CREDENTIALS
from fl_kubeflow_kfp.pipeline.resources import FIELDS, PodResources

from fl_kubeflow import defaults
from fl_kubeflow.async_params import SYNC


@dataclass(frozen=True)
class Parameter:
    """One pipeline parameter: name, Python type (a KFP type), default, description lines."""

    name: str
    annotation: Any
    default: Any
    doc: tuple[str, ...]


def _p(name: str, annotation: Any, default: Any, *doc: str) -> Parameter:
    return Parameter(name, annotation, default, doc)


INITIAL_MODEL_URI = _p(
    "initial_model_uri",
    str,
    "",
    "URI of an earlier run's trained_model to start from; empty: none.",
)


# The federation's parameters in the order the KFP UI lists them.
FEDERATION = (
    _p(
        "num_clients",
        int,
        defaults.NUM_CLIENTS,
        "Number of federated clients (N); one client pod each.",
    ),
    _p("num_rounds", int, defaults.NUM_ROUNDS, "Training rounds (R)."),
    _p(
        "trainer",
        str,
        defaults.TRAINER,
        "What each client trains: keras or torch (built-in models), or",
        "MODULE:FACTORY, a factory in the image (docs/trainers.md).",
    ),
    _p(
        "dataset",
        str,
        defaults.DATASET,
        "digits (bundled, offline), mnist, fashion_mnist, cifar10, or a file",
        "npz:/csv:/parquet:LOCATION (path, http(s):// or s3://) with {client_id}.",
    ),
    _p(
        "data_locations",
        str,
        "[]",
        "JSON list of data files, one per client (client i reads entry",
        "i); replaces dataset. [] to use dataset. docs/data.md.",
    ),
    _p(
        "label_column",
        str,
        defaults.LABEL_COLUMN,
        "A table's column of integer class ids.",
    ),
    _p(
        "feature_columns",
        str,
        defaults.FEATURE_COLUMNS,
        "A table's feature columns, comma-separated; empty: all others.",
    ),
    _p(
        "data_timeout",
        float,
        defaults.DATA_TIMEOUT,
        "Seconds each remote read of a client's data may take per attempt.",
    ),
    _p(
        "data_credentials",
        str,
        DATA_CREDENTIALS,
        "Kubernetes Secret whose AWS_ACCESS_KEY_ID,",
        "AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL_S3 keys the clients read",
        "(each optional; a missing Secret means anonymous access).",
    ),
    _p(
        "partition",
        str,
        defaults.PARTITION,
        "How the dataset is split across clients: iid or dirichlet:ALPHA.",
    ),
    _p("model", str, defaults.MODEL, "mlp, cnn, or a path to a .keras model inside the image."),
    _p("local_epochs", int, defaults.LOCAL_EPOCHS, "Epochs each client trains per round."),
    _p("batch_size", int, defaults.BATCH_SIZE, "Clients' local batch size."),
    _p("learning_rate", float, defaults.LEARNING_RATE, "Clients' local learning rate."),
    _p(
        "optimizer",
        str,
        defaults.OPTIMIZER,
        "Clients' local optimizer: sgd (momentum 0.9) or adam.",
    ),
    _p(
        "strategy",
        str,
        defaults.STRATEGY,
        "Aggregation strategy: fedavg, fedavgm, fedprox, fedadam, fedyogi,",
        "fedadagrad, fedmedian, fedtrimmedavg, krum, multikrum (docs/strategies.md).",
    ),
    _p(
        "strategy_options",
        str,
        "{}",
        'Strategy options as a JSON object, e.g. {"eta": 0.03} or',
        '{"fraction_fit": 0.5} or {"noise_multiplier": 1.0, "clipping_norm": 0.5}.',
    ),
    _p(
        "secure_aggregation",
        bool,
        False,
        "Secure aggregation (SecAgg+): the server learns only each round's sum.",
    ),
    _p(
        "secagg_options",
        str,
        "",
        "Secure aggregation options as name=value,... (bits, range, max_weight,",
        "dropout_fraction, corrupt_fraction, timeout); empty: the defaults.",
    ),
    _p(
        "mode",
        str,
        SYNC,
        "sync: rounds wait for their clients; async: FedBuff, every K updates",
        "make a model version, num_rounds counts them (docs/asynchronous.md).",
    ),
    _p(
        "async_options",
        str,
        "",
        "Asynchronous options as name=value,... (buffer_size, max_concurrency,",
        "staleness_exponent, max_staleness, server_learning_rate); empty: defaults.",
    ),
    _p(
        "min_clients",
        int,
        defaults.MIN_CLIENTS,
        "Fewest client updates a round may close with; 0 means all clients.",
    ),
    _p(
        "round_timeout",
        float,
        defaults.ROUND_TIMEOUT,
        "Seconds a round waits for updates before closing with those that came.",
    ),
    _p(
        "join_timeout",
        float,
        defaults.PIPELINE_JOIN_TIMEOUT,
        "Seconds the server waits for all clients (and clients for the server).",
    ),
    _p("seed", int, defaults.SEED, "Seed for the data split and the initial weights."),
    _p(
        "server_address",
        str,
        "",
        "Server URL for the clients; empty means this run's in-cluster Service.",
    ),
)
CHECKPOINT_PVC = _p(
    "checkpoint_pvc",
    str,
    "",
    "PVC to checkpoint every round on; a crashed server process is",
    "then restarted in its pod, a lost pod retried, both resuming. Empty: none.",
)


def resource_parameters(role: str, pod: PodResources) -> tuple[Parameter, ...]:
    return tuple(
        _p(f"{role}_{name}", str, getattr(pod, name), _RESOURCE_DOCS[role][name]) for name in FIELDS
    )


def federation_parameters(
    server_resources: PodResources, client_resources: PodResources, *, initial_model_uri: bool
) -> tuple[Parameter, ...]:
    """The parameters in the order the KFP UI lists them; resources default to the given ones.

    ``initial_model_uri`` includes that parameter (the whole-run pipeline imports it).
    """
    return (
        *FEDERATION,
        *((INITIAL_MODEL_URI,) if initial_model_uri else ()),
        CHECKPOINT_PVC,
        *resource_parameters("server", server_resources),
        *resource_parameters("client", client_resources),
    )


def pick(names: Sequence[str], **changed: Parameter) -> tuple[Parameter, ...]:
    """The federation's parameters of these names, in this order; ``changed`` replaces some."""
    table = {p.name: p for p in (*FEDERATION, INITIAL_MODEL_URI, CHECKPOINT_PVC)}
    return tuple(changed.get(name, table[name]) for name in names)


_RESOURCE_DOCS = {
    "server": {
        "cpu_request": "CPU the server pod requests, e.g. 500m (Kubernetes quantity).",
        "cpu_limit": "Most CPU the server pod may use, e.g. 2.",
        "memory_request": "Memory the server pod requests, e.g. 1Gi.",
        "memory_limit": "Most memory the server pod may use, e.g. 4Gi.",
    },
    "client": {
        "cpu_request": "CPU each client pod requests, e.g. 1.",
        "cpu_limit": "Most CPU each client pod may use, e.g. 2.",
        "memory_request": "Memory each client pod requests, e.g. 1Gi.",
        "memory_limit": "Most memory each client pod may use, e.g. 4Gi.",
    },
}


def pipeline_function(
    name: str,
    summary: str,
    parameters: Sequence[Parameter],
    body: Callable[[dict[str, Any]], Any],
    *,
    returns: Any = inspect.Signature.empty,
    returns_doc: Sequence[str] = (),
) -> Callable[..., Any]:
    """A function with ``parameters`` as its signature and docstring, for ``@dsl.pipeline``.

    KFP calls a pipeline function once, positionally, with a channel per parameter;
    ``body`` gets them as a dict by name.
    """
    names = [p.name for p in parameters]

    def function(*values: Any) -> Any:
        return body(dict(zip(names, values, strict=True)))

    function.__name__ = function.__qualname__ = name
    function.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                p.name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=p.default,
                annotation=p.annotation,
            )
            for p in parameters
        ],
        return_annotation=returns,
    )
    lines = [summary, "", "Args:"]
    for p in parameters:
        lines.append(f"    {p.name}: {p.doc[0]}")
        lines.extend(f"        {more}" for more in p.doc[1:])
    if returns_doc:
        lines += ["", "Returns:", *(f"    {line}" for line in returns_doc)]
    function.__doc__ = "\n".join(lines)
    return function
