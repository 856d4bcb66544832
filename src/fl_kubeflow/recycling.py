"""Model-sized arrays made again from the memory of ones that nothing holds any more.

A fresh model-sized array is paid for in page faults: the kernel zeroes every page
on its first touch, and on a VM that returns freed memory to its host the cost
varies from round to round (at P = 10M, 15 ms in one round and 125 ms in the next,
benchmarks/results.md). The server makes model-sized arrays every round (FedAvg's
float64 sum, the next model's message) and drops them a round or two later. A
``Recycler`` keeps the arrays it made and hands one out again once no one else
holds it: not the array, nor a view of it, nor a memoryview over it, since each of
those is a reference to it.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

# References to a kept array inside ``Recycler.empty``'s loop when nothing outside
# holds it: the list, the loop variable, and getrefcount's own argument.
_ONLY_KEPT = 3


class Recycler:
    """Hands out arrays of undefined contents, reusing kept ones no longer referenced.

    Args:
        per_kind: Arrays kept per shape and dtype. Beyond it a new array is made and
            not kept, so an array held for good (a leak elsewhere) costs only itself.
    """

    def __init__(self, per_kind: int = 3) -> None:
        self.per_kind = per_kind
        self._kept: list[np.ndarray] = []
        self._lock = threading.Lock()
        self.reused = 0  # arrays handed out again, for tests

    def empty(self, shape: tuple[int, ...], dtype: np.typing.DTypeLike) -> np.ndarray:
        """An array like ``np.empty(shape, dtype)``, writable, possibly used before."""
        shape, dtype = tuple(shape), np.dtype(dtype)
        with self._lock:
            same_kind = 0
            for array in self._kept:
                if array.shape != shape or array.dtype != dtype:
                    continue
                same_kind += 1
                if sys.getrefcount(array) == _ONLY_KEPT:
                    self.reused += 1
                    array.setflags(write=True)
                    return array
            array = np.empty(shape, dtype)
            if same_kind < self.per_kind:
                self._kept.append(array)
            return array
