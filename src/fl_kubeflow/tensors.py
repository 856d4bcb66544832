"""Float64 arithmetic on model tensors, shared by aggregation (server) and clipping (client).

Aggregates and clipped updates are computed in float64 and cast back to each tensor's
own dtype. Kept out of ``strategies`` so that a client pod, which clips its own update,
never loads the server's aggregation rules.
"""

from __future__ import annotations

import numpy as np


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast a float64 aggregate back to the clients' dtype (integers are rounded, not cut)."""
    if np.issubdtype(dtype, np.integer):
        values = np.rint(values)
    return values.astype(dtype, copy=False)


def is_float(array: np.ndarray) -> bool:
    """Server optimizers and DP move floating tensors only; integer ones are averaged as-is."""
    return bool(np.issubdtype(array.dtype, np.floating))
