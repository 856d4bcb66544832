"""What the built-in trainers (Keras and PyTorch) share, framework-free.

* ``proximal_mu``: FedProx's round config, read the same way by both.
* ``check_weights``: the global weights against a model's own tensors, before assigning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def proximal_mu(config: dict[str, Any]) -> float:
    """The round's FedProx ``proximal_mu`` (0 when absent); a bad value is a ValueError."""
    value = config.get("proximal_mu")
    if value is None:
        return 0.0
    if isinstance(value, bool):
        raise ValueError(f"proximal_mu must be a number >= 0, got {value!r}")
    try:
        mu = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"proximal_mu must be a number >= 0, got {value!r}") from None
    if not (math.isfinite(mu) and mu >= 0):
        raise ValueError(f"proximal_mu must be a number >= 0, got {value!r}")
    return mu


def check_weights(shapes: Mapping[str, tuple[int, ...]], weights: Mapping[str, np.ndarray]) -> None:
    """Raise a ValueError unless ``weights`` has exactly the names and shapes in ``shapes``.

    Args:
        shapes: the model's tensors, name to shape.
        weights: the named arrays to assign.

    Raises:
        ValueError: missing or unexpected names (up to five of each), or the first
            tensor whose shape differs, naming both shapes.
    """
    expected, given = set(shapes), set(weights)
    if expected != given:
        missing, extra = sorted(expected - given), sorted(given - expected)
        raise ValueError(
            f"weights do not match the model: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
            f"{' ...' if len(extra) > 5 else ''}"
        )
    for name, shape in shapes.items():
        array = np.asarray(weights[name])
        if tuple(array.shape) != tuple(shape):
            raise ValueError(
                f"weight {name!r} has shape {tuple(array.shape)}; the model needs {tuple(shape)}"
            )
