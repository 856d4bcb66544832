"""Fixed-point encoding of a weighted change, and the decoded mean's error bound.

docs/secure_aggregation.md, "Arithmetic": with K = floor((2**(bits-1) - 1) / W)
levels and step s = C / K, a client of weight w sends w * round(clip(change, -C, C)
/ s) modulo 2**bits, and w as the last element. Weights of a round add up to at most
W, so the sum never wraps; the decoded mean is within s / 2 of the exact weighted
mean of the clipped changes.

Float64 adds its own rounding to that (the division by s, the conversions of the
sum): relative 2**-52 or so of the range, far below s / 2 unless bits = 64 and W is
small (below about 2**12, the step then nears float64's resolution). ``error_bound``
includes it, so it is a bound in every case.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from fl_kubeflow.secagg.params import SecAggParams

# Elements encoded per step: keeps the float64 temporaries in cache.
_CHUNK = 1 << 16
# Float64 rounding in encode and decode, as a fraction of the range (a few ulps).
_FLOAT_SLACK = 2.0**-50


class WeightError(ValueError):
    """A weight outside 1..max_weight (client), or a round total over it (server)."""


@dataclass(frozen=True)
class Quantiser:
    """The encoding ``params`` imply."""

    params: SecAggParams

    @property
    def dtype(self) -> np.dtype:
        """uint32 or uint64."""
        return np.dtype(np.uint32) if self.params.bits == 32 else np.dtype(np.uint64)

    @property
    def levels(self) -> int:
        """K: integer levels per unit of weight from 0 to ``range``."""
        return (2 ** (self.params.bits - 1) - 1) // self.params.max_weight

    @property
    def step(self) -> float:
        """s = range / K."""
        return self.params.range / self.levels

    @property
    def error_bound(self) -> float:
        """The most the decoded mean can differ from the exact one, per parameter: s / 2
        (plus float64's rounding, negligible unless bits = 64 and max_weight is small)."""
        return self.step / 2 + self.params.range * _FLOAT_SLACK

    @property
    def _signed(self) -> np.dtype:
        """The two's-complement reading of ``dtype``."""
        return np.dtype(np.int32) if self.params.bits == 32 else np.dtype(np.int64)

    def encode(self, change: np.ndarray, weight: int) -> tuple[np.ndarray, int]:
        """The unmasked integer vector (len(change) + 1, ``dtype``) and how many
        elements were clipped to the range.

        Raises:
            WeightError: weight not in 1..max_weight.
            ValueError: a change that is not one-dimensional and finite.
        """
        if np.ndim(change) != 1:
            raise ValueError(f"a change is one-dimensional, got shape {np.shape(change)}")
        chunks = (
            (start, np.asarray(change[start : start + _CHUNK], np.float64))
            for start in range(0, len(change), _CHUNK)
        )
        return self.encode_chunks(chunks, len(change), weight)

    def encode_chunks(
        self,
        chunks: Iterable[tuple[int, np.ndarray]],
        length: int,
        weight: int,
        out: np.ndarray | None = None,
    ) -> tuple[np.ndarray, int]:
        """``encode`` of a change given a piece at a time: (offset, float64 elements)
        pairs that cover 0..length once (``Layout.change_chunks``), so no change-sized
        float64 vector is made; the integers go into ``out`` (length + 1 of ``dtype``,
        e.g. recycled memory) or a new array. Each element is encoded as ``encode``
        encodes it: the same vector to the bit.

        Raises:
            WeightError: weight not in 1..max_weight.
            ValueError: a change that is not finite, or ``out`` of another shape or dtype.
        """
        bound = self.params.max_weight
        if isinstance(weight, bool) or not isinstance(weight, int | np.integer):
            raise WeightError(f"a secure update's weight must be an integer, got {weight!r}")
        if not 1 <= weight <= bound:
            raise WeightError(
                f"weight {weight} is outside 1..{bound}: raise the secagg option max_weight"
            )
        if out is None:
            out = np.empty(length + 1, self.dtype)
        elif out.shape != (length + 1,) or out.dtype != self.dtype:
            raise ValueError(f"out must be {self.dtype}[{length + 1}], got {out.dtype}{out.shape}")
        # x / s can round up past K only where K nears 2**52 (bits = 64, small W): there
        # the levels are clipped again, to the largest float not above K.
        top = float(self.levels)
        if top > self.levels:
            top = float(np.nextafter(top, 0))
        reclip = self.levels >= 2**51
        signed = out.view(self._signed)
        factor = self.dtype.type(weight)
        buffer = np.empty(min(_CHUNK, max(length, 1)), np.float64)
        clipped = 0
        step = len(buffer)
        for start, part in chunks:
            # Pieces longer than the buffer are taken a buffer's length at a time.
            for lo in range(0, len(part), step):
                piece = part[lo : lo + step]
                clipped += self._encode_piece(
                    piece, start + lo, buffer, signed, out, factor, top, reclip
                )
        out[-1] = weight
        return out, clipped

    def _encode_piece(
        self,
        part: np.ndarray,
        start: int,
        buffer: np.ndarray,
        signed: np.ndarray,
        out: np.ndarray,
        factor: np.integer,
        top: float,
        reclip: bool,
    ) -> int:
        """Encode ``part`` (float64) into ``out[start:]``; how many elements were clipped."""
        limit, levels_per_unit = self.params.range, self.levels / self.params.range
        levels = buffer[: len(part)]
        clipped = 0
        # Most chunks lie inside the range: min and max (NaN fails both tests) spare
        # them the finiteness check, the count and the clip.
        if not (-limit <= part.min(initial=0.0) and part.max(initial=0.0) <= limit):
            if not np.isfinite(part).all():
                raise ValueError("a change with NaN or infinite elements cannot be encoded")
            clipped = int(np.count_nonzero(np.abs(part) > limit))
            part = np.clip(part, -limit, limit)
        np.multiply(part, levels_per_unit, out=levels)
        np.rint(levels, out=levels)
        if reclip:
            np.clip(levels, -top, top, out=levels)
        # Written as signed integers into the unsigned vector: the two's complement
        # modulo 2**bits. Multiplying in the unsigned type keeps it so (|w * level|
        # < 2**(bits-1): the signed product never overflows).
        dest = out[start : start + len(part)]
        np.copyto(signed[start : start + len(part)], levels, casting="unsafe")
        np.multiply(dest, factor, out=dest)
        return clipped

    def decode(self, total: np.ndarray) -> tuple[np.ndarray, int]:
        """From the unmasked sum: the weighted mean change (float64) and the total weight.

        Raises:
            WeightError: total weight 0 or over max_weight (the sum may have wrapped).
            ValueError: not a one-dimensional vector of ``dtype``.
        """
        levels, scale, weight = self.unpack(total)
        mean = levels.astype(np.float64)
        mean *= scale
        return mean, weight

    def unpack(self, total: np.ndarray) -> tuple[np.ndarray, float, int]:
        """From the unmasked sum: its summed levels (a signed view, no copy), the scale
        that makes them the weighted mean change (``levels * scale``, as ``decode``
        gives it) and the total weight.

        Raises:
            WeightError: total weight 0 or over max_weight (the sum may have wrapped).
            ValueError: not a one-dimensional vector of ``dtype``.
        """
        if total.ndim != 1 or total.dtype != self.dtype or len(total) < 1:
            raise ValueError(f"an unmasked sum is a one-dimensional {self.dtype} vector")
        weight = int(total[-1])
        if not 1 <= weight <= self.params.max_weight:
            raise WeightError(
                f"the round's total weight {weight} is outside 1..{self.params.max_weight} "
                "(secagg option max_weight): the sum cannot be decoded"
            )
        return total[:-1].view(self._signed), self.step / weight, weight
