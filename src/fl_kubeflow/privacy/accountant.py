"""The privacy budget spent so far: (epsilon, delta) from Google's dp-accounting library.

Each round is one Gaussian mechanism with noise multiplier z on the sum of
clipped updates; when only a fraction q of the clients is sampled, it is
accounted as the Poisson-sampled Gaussian mechanism with rate q (the usual
approximation for a fixed-size sample, as in TensorFlow Federated and Opacus).
Rounds compose under RDP (Mironov 2017; Mironov, Talwar, Zhang 2019), converted
to (epsilon, delta) with the library's tightest conversion.

dp-accounting is imported only when a DP run is configured (``train`` extra).
"""

from __future__ import annotations

import logging
import math
from typing import Any


def _library() -> Any:
    try:
        import dp_accounting
        from dp_accounting import rdp
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ValueError(
            "differential privacy needs the dp-accounting package: "
            "pip install 'fl-kubeflow[train]' (or pip install dp-accounting)"
        ) from exc
    return dp_accounting, rdp


def round_event(noise_multiplier: float, sampling_rate: float) -> Any:
    """The dp-accounting event of one round."""
    dp_accounting, _ = _library()
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate >= 1.0:
        return gaussian
    return dp_accounting.PoissonSampledDpEvent(sampling_rate, gaussian)


class PrivacyAccountant:
    """RDP accounting of a run's rounds.

    Args:
        noise_multiplier: z; noise std on the sum of clipped updates is z * C.
        target_delta: the delta at which epsilon is reported.
    """

    def __init__(self, noise_multiplier: float, target_delta: float) -> None:
        _library()  # fail at start, not after the first round, if the package is missing
        self.noise_multiplier = noise_multiplier
        self.target_delta = target_delta
        self.sampling_rates: list[float] = []

    def step(self, sampling_rate: float = 1.0) -> None:
        """Account one round in which a share ``sampling_rate`` of the clients was sampled."""
        if not 0.0 < sampling_rate <= 1.0:
            raise ValueError(f"sampling_rate must be in (0, 1], got {sampling_rate!r}")
        self.sampling_rates.append(float(sampling_rate))

    def epsilon(self) -> float:
        """Epsilon spent after the accounted rounds at ``target_delta`` (inf without noise)."""
        if not self.sampling_rates:
            return 0.0
        if self.noise_multiplier <= 0:
            return math.inf
        _, rdp = _library()
        accountant = rdp.RdpAccountant()
        # Consecutive rounds with one rate compose as one self-composed event: cheaper, same RDP.
        runs: list[tuple[float, int]] = []
        for q in self.sampling_rates:
            if runs and runs[-1][0] == q:
                runs[-1] = (q, runs[-1][1] + 1)
            else:
                runs.append((q, 1))
        for q, count in runs:
            accountant.compose(round_event(self.noise_multiplier, q), count)
        # The library logs a warning for each fractional RDP order whose series does not
        # converge (it just skips that order); that is noise in a server log.
        absl = logging.getLogger("absl")
        level = absl.level
        absl.setLevel(logging.ERROR)
        try:
            return float(accountant.get_epsilon(self.target_delta))
        finally:
            absl.setLevel(level)

    def state_dict(self) -> dict[str, Any]:
        return {"sampling_rates": list(self.sampling_rates)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampling_rates = [float(q) for q in state.get("sampling_rates", [])]
