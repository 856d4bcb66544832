"""An example user package: a Keras model of one's own, trained federated by fl-kubeflow."""
