"""Fixtures shared by test modules: one Kubernetes control plane for the whole session; and
the order in which modules run."""

from __future__ import annotations

import pytest

from tests.k8s_cluster import k8s_cluster  # noqa: F401  (a session-scoped pytest fixture)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with a ``slow`` test first, the rest after, each group in its usual order.

    pytest-xdist (``--dist loadfile``) hands modules to its workers in this order as they
    free up; the long modules, started last, would keep one worker busy minutes after the
    other ran out of work. tests/e2e/conftest.py then moves the e2e tests to the end.
    """
    slow = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow)  # stable: a module stays in one piece
