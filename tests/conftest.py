"""Fixtures shared by test modules: one Kubernetes control plane for the whole session."""

from tests.k8s_cluster import k8s_cluster  # noqa: F401  (a session-scoped pytest fixture)
