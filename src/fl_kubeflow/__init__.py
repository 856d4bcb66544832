"""Federated learning on Kubeflow Pipelines: runtime package.

The runtime (server, client, wire format, strategies) never imports kfp, and only
the Keras trainer imports TensorFlow.
"""

__version__ = "0.1.0"
