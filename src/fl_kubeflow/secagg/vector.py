"""A model as one flat vector: every tensor, in name order, C order, then one element.

The layout is the global model's signature (names, shapes, dtypes); both ends
build it from the model they hold. The last element carries the client's weight.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from fl_kubeflow.wire import Weights

# Elements per step of ``apply``: its float64 buffer stays in cache.
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Layout:
    """Where each tensor sits in the vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]

    @classmethod
    def of(cls, weights: Mapping[str, np.ndarray]) -> Layout:
        """The layout of a model (sorted by name)."""
        names = tuple(sorted(weights))
        arrays = [np.asarray(weights[name]) for name in names]
        return cls(
            names=names,
            shapes=tuple(a.shape for a in arrays),
            dtypes=tuple(a.dtype for a in arrays),
        )

    @property
    def size(self) -> int:
        """The vector's length: every parameter, plus one for the weight."""
        return sum(math.prod(shape) for shape in self.shapes) + 1

    def _slices(self) -> Iterator[tuple[str, tuple[int, ...], np.dtype, slice]]:
        """Each tensor's name, shape, dtype and place in the vector."""
        offset = 0
        for name, shape, dtype in zip(self.names, self.shapes, self.dtypes, strict=True):
            end = offset + math.prod(shape)
            yield name, shape, dtype, slice(offset, end)
            offset = end

    def _check(self, weights: Mapping[str, np.ndarray], what: str) -> None:
        """ValueError unless ``weights`` has exactly this layout's names and shapes."""
        if set(weights) != set(self.names):
            raise ValueError(f"{what} has tensors {sorted(weights)}, expected {list(self.names)}")
        for name, shape in zip(self.names, self.shapes, strict=True):
            if np.shape(weights[name]) != shape:
                raise ValueError(
                    f"{what} tensor {name!r} has shape {np.shape(weights[name])}, expected {shape}"
                )

    def change(
        self, weights: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        """``weights - base`` as float64, flattened (size - 1 elements).

        Raises:
            ValueError: either model does not have this layout's names and shapes.
        """
        self._check(weights, "model")
        self._check(base, "base")
        out = np.empty(self.size - 1, np.float64)
        for name, _, _, where in self._slices():
            # In float64 (the dtype argument), one pass, no temporaries.
            np.subtract(
                np.asarray(weights[name]).reshape(-1),
                np.asarray(base[name]).reshape(-1),
                out=out[where],
                dtype=np.float64,
            )
        return out

    def change_chunks(
        self, weights: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]
    ) -> Iterator[tuple[int, np.ndarray]]:
        """``change`` a piece at a time: (offset, float64 ``weights - base`` there), each
        piece in one reused cache-sized buffer (valid until the next is asked for), so
        no change-sized vector is made; the elements are ``change``'s, to the bit.

        Raises:
            ValueError: either model does not have this layout's names and shapes.
        """
        self._check(weights, "model")
        self._check(base, "base")
        buffer = np.empty(min(_CHUNK, max(self.size - 1, 1)), np.float64)
        for name, _, _, where in self._slices():
            flat_weights = np.asarray(weights[name]).reshape(-1)
            flat_base = np.asarray(base[name]).reshape(-1)
            for lo in range(0, len(flat_base), _CHUNK):
                part = buffer[: len(flat_base[lo : lo + _CHUNK])]
                np.subtract(
                    flat_weights[lo : lo + _CHUNK],
                    flat_base[lo : lo + _CHUNK],
                    out=part,
                    dtype=np.float64,
                )
                yield where.start + lo, part

    def apply(
        self,
        base: Mapping[str, np.ndarray],
        change: np.ndarray,
        scale: float = 1.0,
        out: Mapping[str, np.ndarray] | None = None,
    ) -> Weights:
        """``base + scale * change`` as a model with the layout's shapes and dtypes (cast
        like the base: integer tensors rounded); ``change`` may be integer (the summed
        levels of secure aggregation, ``scale`` their step over the total weight).
        A tensor goes into ``out``'s of its name when that one is writable and of its
        shape and dtype (the next model's message: no fresh pages), else into a new one.

        Computed in float64 a chunk at a time in a reused buffer, each element
        rounded as ``base + change.astype(float64) * scale`` would round it: one pass,
        no change- or model-sized temporaries.

        Raises:
            ValueError: a base without this layout's names and shapes, or a change of
                another length.
        """
        self._check(base, "base")
        if np.shape(change) != (self.size - 1,):
            raise ValueError(f"a change has {self.size - 1} elements, got {np.shape(change)}")
        model: Weights = {}
        buffer = np.empty(min(_CHUNK, max(self.size - 1, 1)), np.float64)
        for name, shape, dtype, where in self._slices():
            flat = np.asarray(base[name]).reshape(-1)
            part = change[where]
            tensor = None if out is None else out.get(name)
            if tensor is None or not _fits(tensor, shape, dtype):
                tensor = np.empty(shape, dtype)
            into = tensor.reshape(-1)
            for lo in range(0, len(into), _CHUNK):
                values = buffer[: len(into[lo : lo + _CHUNK])]
                np.multiply(part[lo : lo + _CHUNK], scale, out=values)
                np.add(values, flat[lo : lo + _CHUNK], out=values)
                if dtype.kind in "iub":
                    np.rint(values, out=values)
                np.copyto(into[lo : lo + _CHUNK], values, casting="unsafe")
            model[name] = tensor
        return model


def _fits(tensor: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """Whether ``tensor`` can take a result of ``shape`` and ``dtype`` in place."""
    return (
        tensor.shape == shape
        and tensor.dtype == dtype
        and tensor.flags.writeable
        and tensor.flags.c_contiguous
    )
