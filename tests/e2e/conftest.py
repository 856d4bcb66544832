"""Fixtures for the e2e tests: the one-node cluster (tests/e2e/node_cluster.py) and namespaces.

Every test under tests/e2e/ is marked ``e2e``. Where the cluster cannot run (no root, no
docker, no ../shared/k8s) the tests skip saying why, except under ``CI=true``, where that is a
failure: CI must not go green by skipping them.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import node_cluster as nc
from tests.e2e import prestart
from tests.e2e.daemons import ClusterStartError

E2E_DIR = Path(__file__).resolve().parent
# Per e2e test, set-up included: the first one may build the base and project images.
E2E_TEST_TIMEOUT = float(os.environ.get("FL_E2E_TEST_TIMEOUT", "2400"))
_setup_report: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests/e2e/ ``e2e`` and run them last: the cluster is up only while they run, not
    beside the timing-sensitive loopback tests."""
    e2e = [item for item in items if E2E_DIR in Path(str(item.fspath)).resolve().parents]
    for item in e2e:
        item.add_marker(pytest.mark.e2e)
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(E2E_TEST_TIMEOUT))
    chosen = set(e2e)
    items[:] = [item for item in items if item not in chosen] + e2e


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _setup_report:
        terminalreporter.write_sep("-", "e2e node cluster")
        for line in _setup_report:
            terminalreporter.write_line(line)


def _unavailable(reason: str) -> None:
    if nc.is_ci():
        pytest.fail(f"CI=true, so this fails instead of skipping: {reason}", pytrace=False)
    pytest.skip(reason)


def _prestarted(layout: nc.Layout, timeouts: nc.Timeouts) -> nc.ClusterInfo | None:
    """The cluster scripts/test.sh started beside the other tests (``FL_E2E_PRESTART`` names
    its status file, tests/e2e/prestart.py), once ready; None without one, or when it found
    a cluster started by hand to reuse or the prerequisites missing."""
    path = os.environ.get("FL_E2E_PRESTART")
    if not path:
        return None
    status = prestart.wait_for_status(Path(path), timeouts.prestart)
    if status["state"] == "failed":
        raise ClusterStartError(f"(prestarted) {status['reason']}")
    if status["state"] != "ready":
        return None
    info = nc.running_info(layout)
    if info is None:
        raise ClusterStartError(f"the prestarted cluster is no longer running ({path})")
    _setup_report.append(
        f"prestarted beside the other tests in {status['seconds']:.0f}s (image "
        f"{'built' if status['image_built'] else 'cached'} in {status['image_seconds']:.0f}s)"
    )
    return info


@pytest.fixture(scope="session")
def node_cluster() -> Iterator[nc.NodeCluster]:
    """The node cluster for this session, with the project's image built for this checkout.

    Adopts the cluster scripts/test.sh prestarted beside the other tests; reuses a cluster
    started by hand (``python -m tests.e2e.node_cluster up``) outside CI and leaves it
    running; otherwise starts one (removing whatever an earlier run left). One it started or
    adopted it removes at the end, checking that nothing is left behind.
    """
    problem = nc.prerequisites_problem()
    if problem:
        _unavailable(problem)
    layout, timeouts = nc.Layout.from_env(), nc.Timeouts.from_env()
    started = time.monotonic()
    try:
        prestarted = _prestarted(layout, timeouts)
        info = prestarted or (None if nc.is_ci() else nc.running_info(layout))
        owned = info is None or info.owner != "manual"
        if info is None:
            info = nc.up(layout, timeouts, owner=f"pytest-{os.getpid()}", die_with_parent=True)
        image_started = time.monotonic()
        # A no-op after a prestart, unless the sources changed since.
        image, built = nc.build_project_image(layout, timeouts)
        image_seconds = time.monotonic() - image_started
    except ClusterStartError as exc:
        pytest.fail(f"the e2e node cluster did not start: {exc}", pytrace=False)
    hostpath_root = layout.hostpath / f"session-{uuid.uuid4().hex[:8]}"
    hostpath_root.mkdir(parents=True)
    hostpath_root.chmod(0o1777)  # pods run as uid 1000
    cluster = nc.NodeCluster(info, layout, image, hostpath_root, timeouts)
    cpu, memory = cluster.allocatable()
    how = "adopted after waiting" if prestarted else "started in" if owned else "reused in"
    _setup_report.append(
        f"{how} {time.monotonic() - started:.0f}s "
        f"(phases: {info.timings}; image {'built' if built else 'cached'} in "
        f"{image_seconds:.0f}s: {image}); node allocatable {cpu}m CPU, {memory >> 20} MiB"
    )
    if owned and info.cleaned_before:
        _setup_report.append("cleaned what an earlier run left: " + "; ".join(info.cleaned_before))
    try:
        yield cluster
    finally:
        cluster.close()
        shutil.rmtree(hostpath_root, ignore_errors=True)
        if owned:
            stopped = time.monotonic()
            notes = nc.down(layout, timeouts)
            left = nc.leftovers(layout)
            _setup_report.append(
                f"stopped in {time.monotonic() - stopped:.0f}s"
                + (f" ({'; '.join(notes)})" if notes else "")
            )
            if left:
                _setup_report.append("LEFT BEHIND: " + "; ".join(left))
                pytest.fail("the e2e node cluster left behind: " + "; ".join(left), pytrace=False)


@pytest.fixture
def namespace(node_cluster: nc.NodeCluster) -> Iterator[str]:
    """A fresh namespace with a usable ``default`` service account; deleted afterwards."""
    name = node_cluster.create_namespace()
    yield name
    node_cluster.delete_namespace(name)


@pytest.fixture(autouse=True)
def scenario_time(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each e2e test's wall time, in the JUnit report and the terminal summary."""
    started = time.monotonic()
    yield
    seconds = round(time.monotonic() - started)
    request.node.user_properties.append(("scenario_seconds", seconds))
    print(f"\n{request.node.name}: {seconds} s")
