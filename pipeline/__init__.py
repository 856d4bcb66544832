"""The federated-learning KFP pipeline (depends on ``components``, which calls the runtime)."""

from pipeline.fl_pipeline import PIPELINE_NAME, build_pipeline, compile_pipeline, fl_pipeline

__all__ = ["PIPELINE_NAME", "build_pipeline", "compile_pipeline", "fl_pipeline"]
