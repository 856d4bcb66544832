"""The federated-learning KFP pipeline and graph component (depend on ``components``).

- ``fl_pipeline`` / ``build_pipeline``: a whole run (one federation per pipeline run);
- ``federated_training`` / ``build_federated_training``: the same federation as one step
  of a user's own pipeline (a graph component returning ``trained_model`` and ``metrics``);
- ``CLIENT_CONTRACT``: the inputs both pass a client component, built-in or a user's own;
- ``fl_server_pipeline`` / ``fl_client_pipeline``: across silos, the server alone and one
  data owner's client in its own namespace or cluster (docs/kubeflow.md, "Across silos").
"""

from fl_kubeflow_kfp.pipeline.client_pipeline import (
    build_client_pipeline,
    compile_client_pipeline,
    fl_client_pipeline,
)
from fl_kubeflow_kfp.pipeline.federated_training import (
    FEDERATED_TRAINING,
    FEDERATED_TRAINING_FROM_MODEL,
    build_federated_training,
    federated_training,
)
from fl_kubeflow_kfp.pipeline.federation import CLIENT_CONTRACT, check_client_component
from fl_kubeflow_kfp.pipeline.fl_pipeline import (
    CLIENT_RESOURCES,
    PIPELINE_NAME,
    SERVER_RESOURCES,
    PodResources,
    build_pipeline,
    compile_pipeline,
    fl_pipeline,
)
from fl_kubeflow_kfp.pipeline.server_pipeline import (
    build_server_pipeline,
    compile_server_pipeline,
    fl_server_pipeline,
)

__all__ = [
    "CLIENT_CONTRACT",
    "CLIENT_RESOURCES",
    "FEDERATED_TRAINING",
    "FEDERATED_TRAINING_FROM_MODEL",
    "PIPELINE_NAME",
    "SERVER_RESOURCES",
    "PodResources",
    "build_client_pipeline",
    "build_federated_training",
    "build_pipeline",
    "build_server_pipeline",
    "check_client_component",
    "compile_client_pipeline",
    "compile_pipeline",
    "compile_server_pipeline",
    "federated_training",
    "fl_client_pipeline",
    "fl_pipeline",
    "fl_server_pipeline",
]
