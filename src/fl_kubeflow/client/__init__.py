"""The client side of a federation, and the public API for bringing one's own trainer.

``Trainer`` (with ``FitResult`` and ``EvaluateResult``) is what a user's training code
implements; ``fl_kubeflow.tasks.join_federation`` takes one into a run.
docs/trainers.md describes both.
"""

from fl_kubeflow.client.signature import ModelMismatch
from fl_kubeflow.client.trainer import EvaluateResult, FitResult, Trainer

__all__ = ["EvaluateResult", "FitResult", "ModelMismatch", "Trainer"]
