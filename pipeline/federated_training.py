"""Federated training as one step of a user's pipeline: a graph component.

A pipeline used as a component: the user's pipeline calls it with the federation's
parameters, and its ``trained_model`` and ``metrics`` outputs feed the user's next step::

    prepare data ──> federated-training ──> evaluate(trained_model) ──> ...

Inside are the tasks of ``fl_pipeline`` (``federation``): client-ids, the clients'
ParallelFor, and the server under ``dsl.If``/``dsl.Else`` on ``checkpoint_pvc``, whose two
tasks return their outputs through ``dsl.OneOf``. There is no exit handler: KFP cannot
return outputs produced inside one. Cleanup is still guaranteed without it (the server
deletes its Service and token Secret at the end, and both are owned by the server pod,
so Kubernetes deletes them with it); a pipeline that wants the explicit cleanup step
too wraps this component in its own ``dsl.ExitHandler(fl_cleanup)`` (docs/kubeflow.md).

An initial model is an artifact input, in a variant built with ``initial_model=True``:
KFP 2.17 compiles an optional artifact input on a graph component, but its backend's
driver fails a run that leaves it unconnected ("parent DAG does not have input artifact")
as soon as an inner task binds it, and ``dsl.OneOf`` cannot span the nested conditions an
importer of an optional URI would need.
"""

import inspect
from typing import Any, NamedTuple

from fl_kubeflow_kfp.components import DEFAULT_IMAGE, FLComponents, build_components
from fl_kubeflow_kfp.pipeline.federation import (
    add_clients,
    add_servers,
    check_client_component,
    check_retry_deadline,
)
from fl_kubeflow_kfp.pipeline.parameters import (
    Parameter,
    federation_parameters,
    pipeline_function,
)
from fl_kubeflow_kfp.pipeline.resources import CLIENT_RESOURCES, SERVER_RESOURCES, PodResources
from kfp import dsl
from kfp.dsl import Input, Metrics, Model, base_component
from kfp.dsl.graph_component import GraphComponent

FEDERATED_TRAINING = "federated-training"
FEDERATED_TRAINING_FROM_MODEL = "federated-training-from-model"
SUMMARY = "Federated training as one step: a server and N clients; returns the trained model."
INITIAL_MODEL = Parameter(
    "initial_model",
    Input[Model],
    inspect.Parameter.empty,
    ("Starting weights: the trained_model of an earlier run (same model and dataset).",),
)
OUTPUTS_DOC = (
    "trained_model: Folder with weights.safetensors, history.json and (keras trainer)",
    "    model.keras; metadata says which trainer and framework.",
    "metrics: Final evaluation accuracy and loss, rounds completed, clients.",
)


class Outputs(NamedTuple):
    trained_model: Model
    metrics: Metrics


def build_federated_training(
    image: str = DEFAULT_IMAGE,
    server_resources: PodResources = SERVER_RESOURCES,
    client_resources: PodResources = CLIENT_RESOURCES,
    retry_deadline: int | None = None,
    client_component: base_component.BaseComponent | None = None,
    *,
    initial_model: bool = False,
) -> GraphComponent:
    """The ``federated_training`` graph component with every component using ``image``.

    Args:
        image: Container image of every step (built from images/Dockerfile, or FROM it).
        server_resources: Defaults of the server_cpu_request ... parameters.
        client_resources: Defaults of the client_cpu_request ... parameters.
        retry_deadline: The checkpointed server's retry deadline in seconds (default:
            ``server_retry_deadline()``).
        client_component: A user's own client component in place of the built-in one
            (``federation.CLIENT_CONTRACT``; checked here, naming what it lacks).
        initial_model: Take a required ``initial_model`` Model input to start from.
    """
    comps: FLComponents = build_components(image)
    retry_deadline = check_retry_deadline(retry_deadline)
    if client_component is not None:
        check_client_component(client_component)

    def body(p: dict[str, Any]) -> Outputs:
        ids = comps.client_ids(num_clients=p["num_clients"])
        ids.set_display_name("client-ids")
        initial = {"initial_model": p["initial_model"]} if initial_model else {}
        checkpointed, plain = add_servers(comps, p, retry_deadline, **initial)
        add_clients(comps, p, ids, client_component)
        return Outputs(
            trained_model=dsl.OneOf(
                checkpointed.outputs["trained_model"], plain.outputs["trained_model"]
            ),
            metrics=dsl.OneOf(checkpointed.outputs["metrics"], plain.outputs["metrics"]),
        )

    parameters = federation_parameters(server_resources, client_resources, initial_model_uri=False)
    if initial_model:
        parameters = (INITIAL_MODEL, *parameters)  # first: it has no default
    name = FEDERATED_TRAINING_FROM_MODEL if initial_model else FEDERATED_TRAINING
    summary = SUMMARY + (" Starts from initial_model." if initial_model else "")
    function = pipeline_function(
        name.replace("-", "_"), summary, parameters, body, returns=Outputs, returns_doc=OUTPUTS_DOC
    )
    return dsl.pipeline(name=name)(function)


federated_training = build_federated_training(DEFAULT_IMAGE)
