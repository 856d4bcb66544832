"""Fixed L2 clipping of a model update (its change from the global model).

The update is treated as one vector over all tensors, as in DP-FedAvg (McMahan
et al. 2018, "Learning Differentially Private Recurrent Language Models"): the
sensitivity bound is on the whole change a client can make, not per layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fl_kubeflow.tensors import cast_like
from fl_kubeflow.wire import Weights

# The round-config key that tells clients to clip, to this norm (``clipping="client"``):
# the server-side DP wrapper sets it, the client reads it.
CLIENT_CLIPPING_KEY = "dp_clipping_norm"


def weight_delta(weights: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> Weights:
    """``weights - reference`` per tensor, in float64."""
    return {
        name: np.asarray(weights[name], np.float64) - np.asarray(ref, np.float64)
        for name, ref in reference.items()
    }


def l2_norm(tensors: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all tensors taken together as one vector."""
    total = 0.0
    for value in tensors.values():
        flat = np.asarray(value, np.float64).ravel()
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


def clip_delta(delta: Mapping[str, np.ndarray], clipping_norm: float) -> tuple[Weights, float]:
    """Scale ``delta`` to norm at most ``clipping_norm``: (clipped float64 delta, norm before)."""
    if not clipping_norm > 0:
        raise ValueError(f"clipping_norm must be positive, got {clipping_norm!r}")
    norm = l2_norm(delta)
    factor = min(1.0, clipping_norm / norm) if norm > 0 else 1.0
    return {name: np.asarray(d, np.float64) * factor for name, d in delta.items()}, norm


def clip_weights(
    weights: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], clipping_norm: float
) -> tuple[Weights, float]:
    """``reference + clip(weights - reference)`` in the weights' dtypes, and the norm before.

    After casting back to float32 the change can exceed the norm by a rounding
    error (~1e-7 relative); the server's own clipping absorbs that.
    """
    clipped, norm = clip_delta(weight_delta(weights, reference), clipping_norm)
    out: Weights = {}
    for name, ref in reference.items():
        out[name] = cast_like(np.asarray(ref, np.float64) + clipped[name], weights[name].dtype)
    return out, norm
