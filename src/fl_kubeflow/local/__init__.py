"""``fl-kubeflow local``: a whole federation on one machine, as real processes."""
