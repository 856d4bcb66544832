"""Differential privacy for federated runs: clipping, Gaussian noise, and accounting.

* ``clipping``: pure functions that bound an update's change to L2 norm C.
* ``accountant``: the (epsilon, delta) spent, from the dp-accounting library's RDP
  accountant for the (sampled) Gaussian mechanism.
* ``central``: ``DPFixedClipping``, a strategy wrapper (Flower's
  ``DifferentialPrivacyServerSideFixedClipping`` / ``...ClientSideFixedClipping``).
* ``client``: client-side clipping of a trained model before it is sent.
"""

from fl_kubeflow.privacy.clipping import clip_delta, clip_weights, l2_norm, weight_delta

__all__ = ["clip_delta", "clip_weights", "l2_norm", "weight_delta"]
