"""Fixed-point encoding of a weighted change, and the decoded mean's error bound.

docs/secure_aggregation.md, "Arithmetic": with K = floor((2**(bits-1) - 1) / W)
levels and step s = C / K, a client of weight w sends w * round(clip(change, -C, C)
/ s) modulo 2**bits, and w as the last element. Weights of a round add up to at most
W, so the sum never wraps; the decoded mean is within s / 2 of the exact weighted
mean of the clipped changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fl_kubeflow.secagg.params import SecAggParams


class WeightError(ValueError):
    """A weight outside 1..max_weight (client), or a round total over it (server)."""


@dataclass(frozen=True)
class Quantiser:
    """The encoding ``params`` imply."""

    params: SecAggParams

    @property
    def dtype(self) -> np.dtype:
        """uint32 or uint64."""
        raise NotImplementedError

    @property
    def levels(self) -> int:
        """K: integer levels per unit of weight from 0 to ``range``."""
        raise NotImplementedError

    @property
    def step(self) -> float:
        """s = range / K."""
        raise NotImplementedError

    @property
    def error_bound(self) -> float:
        """The most the decoded mean can differ from the exact one, per parameter: s / 2."""
        raise NotImplementedError

    def encode(self, change: np.ndarray, weight: int) -> tuple[np.ndarray, int]:
        """The unmasked integer vector (len(change) + 1, ``dtype``) and how many
        elements were clipped to the range.

        Raises:
            WeightError: weight not in 1..max_weight.
        """
        raise NotImplementedError

    def decode(self, total: np.ndarray) -> tuple[np.ndarray, int]:
        """From the unmasked sum: the weighted mean change (float64) and the total weight.

        Raises:
            WeightError: total weight 0 or over max_weight (the sum may have wrapped).
        """
        raise NotImplementedError
