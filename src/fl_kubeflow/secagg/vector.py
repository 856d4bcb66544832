"""A model as one flat vector: every tensor, in name order, C order, then one element.

The layout is the global model's signature (names, shapes, dtypes); both ends
build it from the model they hold. The last element carries the client's weight.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fl_kubeflow.wire import Weights


@dataclass(frozen=True)
class Layout:
    """Where each tensor sits in the vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]

    @classmethod
    def of(cls, weights: Mapping[str, np.ndarray]) -> Layout:
        """The layout of a model (sorted by name)."""
        raise NotImplementedError

    @property
    def size(self) -> int:
        """The vector's length: every parameter, plus one for the weight."""
        raise NotImplementedError

    def change(
        self, weights: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        """``weights - base`` as float64, flattened (size - 1 elements)."""
        raise NotImplementedError

    def apply(self, base: Mapping[str, np.ndarray], change: np.ndarray) -> Weights:
        """``base + change`` as a model with the layout's shapes and dtypes (cast like the
        base: integer tensors rounded)."""
        raise NotImplementedError
