"""Differential privacy for federated runs: the parts shared by both sides, and accounting.

* ``clipping``: pure functions that bound an update's change to L2 norm C, and the
  round-config key that asks clients to clip; used by the server's DP wrapper and by
  the client (``fl_kubeflow.client.clipping``).
* ``accountant``: the (epsilon, delta) spent, from the dp-accounting library's RDP
  accountant for the (sampled) Gaussian mechanism (server side).

The DP strategy wrapper lives with the strategies (``strategies.dp_fixed_clipping``).
"""

from fl_kubeflow.privacy.clipping import clip_delta, clip_weights, l2_norm, weight_delta

__all__ = ["clip_delta", "clip_weights", "l2_norm", "weight_delta"]
