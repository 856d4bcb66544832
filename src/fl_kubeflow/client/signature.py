"""Does the server's model fit this client's trainer? Checked before the first round.

A trainer whose model differs from the server's (another architecture, another
framework's tensor names, float64 weights) would otherwise train on weights it
cannot load, or send an update the server refuses only after a round of work.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fl_kubeflow.wire import describe

# How many differing tensor names a message lists before "...".
_SHOWN = 3


class ModelMismatch(ValueError):
    """The server's global weights do not match the trainer's (names, shapes or dtypes)."""


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def mismatch(server: Mapping[str, np.ndarray], trainer: Mapping[str, np.ndarray]) -> str | None:
    """What first differs between the server's and the trainer's weights, or None.

    Names the first tensors only the server has, only the trainer has, or whose shape
    or dtype differ (in the server's order), each side's version shown.
    """
    theirs, ours = describe(server), describe(trainer)
    missing = [name for name in theirs if name not in ours]
    extra = [name for name in ours if name not in theirs]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"the server's model has {_names(missing)}, which the trainer lacks")
        if extra:
            parts.append(f"the trainer has {_names(extra)}, which the server's model lacks")
        return "; ".join(parts)
    for name, (shape, dtype) in theirs.items():
        own_shape, own_dtype = ours[name]
        if (shape, dtype) != (own_shape, own_dtype):
            return (
                f"tensor {name!r} is {dtype}{list(shape)} in the server's model but "
                f"{own_dtype}{list(own_shape)} in the trainer's"
            )
    return None


def check_matches(
    server: Mapping[str, np.ndarray], trainer: Mapping[str, np.ndarray], client_id: str
) -> None:
    """Raise ModelMismatch naming the first differing tensors, if there are any."""
    problem = mismatch(server, trainer)
    if problem is not None:
        raise ModelMismatch(
            f"client {client_id}: the server's model does not match this client's trainer: "
            f"{problem} (every client's trainer must build the same model as the server's "
            "initial model; see docs/trainers.md)"
        )
