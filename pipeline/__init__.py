"""The federated-learning KFP pipeline (depends on ``components``, which calls the runtime)."""

from fl_kubeflow_kfp.pipeline.fl_pipeline import (
    CLIENT_RESOURCES,
    PIPELINE_NAME,
    SERVER_RESOURCES,
    PodResources,
    build_pipeline,
    compile_pipeline,
    fl_pipeline,
)

__all__ = [
    "CLIENT_RESOURCES",
    "PIPELINE_NAME",
    "SERVER_RESOURCES",
    "PodResources",
    "build_pipeline",
    "compile_pipeline",
    "fl_pipeline",
]
