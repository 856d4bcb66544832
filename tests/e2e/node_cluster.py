"""A one-node Kubernetes cluster that runs the project's image, for the e2e tests.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet (Debian's docker.io
through dockershim), kube-proxy (iptables) and a cluster DNS (dnsmasq fed with every Service,
``tests/e2e/cluster_dns.py``), all v1.20.2 from ``../shared/k8s/`` as ``scripts/k8s-assets.sh``
unpacks them into ``.k8s-assets/``. No image can be pulled, so the set-up makes its own: a
stand-in for ``python:3.11-slim-bookworm`` from Debian's packages (debootstrap + docker import),
the pause image (``pause.c`` here, ``gcc -static``), and the project's image from
``images/Dockerfile`` exactly as users build it. Facts and quirks: ``../shared/k8s/README.md``.

Everything lives under one folder, ``FL_E2E_ROOT`` (default ``/var/lib/fl-kubeflow-e2e``):
a dockerd of its own (data root, socket, pidfile: the docker data doubles as the image cache),
the cluster's state and the logs. Only one such cluster can run on a machine (docker0, the
kubelet's ports, iptables); :func:`down` removes whatever any earlier run left (containers,
KUBE- iptables chains, mounts under the kubelet folder, processes) and :func:`up` calls it first.
Tests use the session fixture ``node_cluster`` (``tests/e2e/conftest.py``). By hand, from the
repository root: ``.venv/bin/python -m tests.e2e.node_cluster up|down|status|image``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.e2e.cluster_dns import dns_query
from tests.e2e.daemons import (
    DOCKER,
    REPO_ROOT,
    Layout,
    Timeouts,
    assets_dir,
    cmdline,
    docker_command,
    mount_points,
    read_pidfile,
    run,
    shared_dir,
    spawn,
    terminate,
    unmount_under,
    wait_until,
)
from tests.e2e.images import (
    BRIDGE_IP,
    PAUSE_IMAGE,
    build_project_image,
    ensure_base_image,
    ensure_pause_image,
    start_dockerd,
)
from tests.k8s_cluster import _http_ok, _kubeconfig, _write_certificates

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, CoreV1Api

RUNC = "/usr/sbin/runc"
POD_CIDR = "172.17.0.0/16"  # no CNI: pods get docker0 addresses
SERVICE_CIDR = "10.96.0.0/16"
API_SERVICE_IP = "10.96.0.1"
API_PORT = 6443

# Fixed ports below the kernel's ephemeral range, so loopback tests picking free ports
# (tests/k8s_cluster.py) never take them.
ETCD_PORT, ETCD_PEER_PORT = 12379, 12380
SCHEDULER_PORT = 10259
PROXY_HEALTH_PORT = 10256
KUBELET_HEALTH_PORT = 10248
NODE_NAME = "fl-e2e-node"
CLUSTER_DOMAIN = "cluster.local"

# Commands the set-up runs, and the Debian package each comes from (scripts/e2e-prereqs.sh
# installs them).
COMMANDS = {
    "dockerd": "docker.io",
    DOCKER: "docker.io",
    RUNC: "runc (docker.io)",
    "debootstrap": "debootstrap",
    "iptables": "iptables",
    "iptables-save": "iptables",
    "iptables-restore": "iptables",
    "conntrack": "conntrack",
    "dnsmasq": "dnsmasq-base",
    "jq": "jq (runc-nooom needs it)",
    "gcc": "gcc",
    "mount": "mount",
    "umount": "mount",
}

STATIC_LIBC = Path("/usr/lib/x86_64-linux-gnu/libc.a")  # libc6-dev: gcc -static of pause.c
K8S_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet",
                "kube-proxy")  # fmt: skip

# As tests/k8s_cluster.py, plus the node lifecycle controller: it lifts the not-ready taint the
# kubelet registers the node with, or nothing is ever scheduled.
CONTROLLERS = (
    "*,-nodeipam,-csrsigning,-csrapproving,-csrcleaner,-cloud-node-lifecycle,-route,-service"
)

DAEMONS = ("dockerd", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
           "kubelet", "kube-proxy", "cluster-dns")  # fmt: skip


@dataclass
class ClusterInfo:
    """What a running cluster's clients need; saved as ``state/cluster.json``."""

    host: str
    ca_file: str
    token: str
    kubeconfig: str
    node_name: str
    owner: str
    started_at: float
    timings: dict[str, float] = field(default_factory=dict)
    cleaned_before: list[str] = field(default_factory=list)  # what an earlier run had left

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))
        path.chmod(0o600)

    @classmethod
    def load(cls, path: Path) -> ClusterInfo | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def is_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def prerequisites_problem() -> str | None:
    """Why this machine cannot run the node cluster, or None. Checks what can be known cheaply."""
    problems: list[str] = []
    if sys.platform != "linux":
        return f"the e2e node cluster needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        problems.append("it must run as root (dockerd, kubelet, iptables, mounts)")
    missing = sorted(
        {package for command, package in COMMANDS.items() if not shutil.which(command)}
    )
    if missing:
        problems.append(f"missing commands from Debian packages: {', '.join(missing)}")
    if not STATIC_LIBC.is_file():
        problems.append(f"missing {STATIC_LIBC} (package libc6-dev, for gcc -static of pause.c)")
    assets = assets_dir()
    absent = [name for name in K8S_BINARIES if not os.access(assets / name, os.X_OK)]
    if absent:
        problems.append(
            f"missing Kubernetes binaries in {assets}: {', '.join(absent)} "
            "(run scripts/k8s-assets.sh; it unpacks them from ../shared/k8s/)"
        )
    runc_wrapper = shared_dir() / "runc-nooom"
    if not os.access(runc_wrapper, os.X_OK):
        problems.append(f"missing {runc_wrapper} (set K8S_SHARED_DIR to ../shared/k8s)")
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        problems.append("the `kubernetes` Python package is not installed (scripts/setup.sh)")
    if problems:
        return (
            "the e2e node cluster cannot run here: "
            + "; ".join(problems)
            + ". scripts/e2e-prereqs.sh installs the packages (as root); see README.md, "
            "'Run the tests'."
        )
    return None


def _api_ready(host: str, token: str, ca_file: Path) -> bool:
    return _http_ok(f"{host}/readyz", token, ssl.create_default_context(cafile=str(ca_file)))


def _insecure_ok(url: str) -> bool:
    """A component's own /healthz over its self-signed certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return _http_ok(url, None, context)


def _node_ready(core: CoreV1Api) -> bool:
    """Ready, and schedulable: no taint left (the not-ready one goes a moment after Ready)."""
    node = core.read_node(NODE_NAME)
    ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
    return ready and not node.spec.taints


def _api_client(info: ClusterInfo) -> ApiClient:
    """A cluster-admin ApiClient for ``info``'s cluster."""
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = info.host
    configuration.ssl_ca_cert = info.ca_file
    configuration.api_key = {"authorization": info.token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(configuration)


def _core_v1(info: ClusterInfo) -> CoreV1Api:
    from kubernetes import client

    return client.CoreV1Api(_api_client(info))


def up(
    layout: Layout | None = None,
    timeouts: Timeouts | None = None,
    owner: str = "manual",
    die_with_parent: bool = False,
) -> ClusterInfo:
    """Start the whole node cluster (after removing whatever an earlier run left).

    ``die_with_parent`` ties every daemon to the calling process (the pytest session), so a
    killed session leaves no daemons; :func:`down` at the next start removes the rest.
    """
    layout = layout or Layout.from_env()
    timeouts = timeouts or Timeouts.from_env()
    assets = assets_dir()
    cleaned = down(layout, timeouts)
    timings: dict[str, float] = {}
    for folder in (layout.run, layout.logs, layout.state, layout.hostpath, layout.dns_hosts.parent):
        folder.mkdir(parents=True, exist_ok=True)
    layout.hostpath.chmod(0o1777)  # pods run as uid 1000

    def timed(phase: str, step: Callable[[], object]) -> None:
        started = time.monotonic()
        step()
        timings[phase] = round(time.monotonic() - started, 1)

    try:
        timed("dockerd", lambda: start_dockerd(layout, timeouts, die_with_parent))
        timed("base_image", lambda: ensure_base_image(layout, timeouts))
        timed("pause_image", lambda: ensure_pause_image(layout, timeouts))
        started = time.monotonic()
        info = _start_kubernetes(layout, timeouts, assets, owner, die_with_parent)
        timings["kubernetes"] = round(time.monotonic() - started, 1)
    except BaseException:
        down(layout, timeouts)
        raise
    info.timings = timings
    info.cleaned_before = cleaned
    info.save(layout.info_file)
    return info


def _start_kubernetes(
    layout: Layout, timeouts: Timeouts, assets: Path, owner: str, die_with_parent: bool
) -> ClusterInfo:
    pki = layout.state / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    cert, key, sa_key, sa_pub = _write_certificates(
        pki,
        ip_sans=("127.0.0.1", BRIDGE_IP, API_SERVICE_IP),
        dns_sans=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                  f"kubernetes.default.svc.{CLUSTER_DOMAIN}"),
    )  # fmt: skip
    token = secrets.token_hex(16)
    tokens = pki / "tokens.csv"
    tokens.write_text(f"{token},admin,admin,system:masters\n")
    tokens.chmod(0o600)
    host = f"https://{BRIDGE_IP}:{API_PORT}"
    layout.kubeconfig.write_text(_kubeconfig(host, cert, token))
    layout.kubeconfig.chmod(0o600)
    info = ClusterInfo(host, str(cert), token, str(layout.kubeconfig), NODE_NAME, owner,
                       time.time())  # fmt: skip
    kubeconfig = str(layout.kubeconfig)

    def start(name: str, args: list[str]) -> None:
        spawn(layout, name, [str(assets / name), *args], die_with_parent)

    started: list[str] = ["dockerd"]

    def wait(what: str, check: Callable[[], bool], timeout: float) -> None:
        wait_until(what, check, timeout, layout, started)

    etcd_url = f"http://127.0.0.1:{ETCD_PORT}"
    peer_url = f"http://127.0.0.1:{ETCD_PEER_PORT}"
    start("etcd", [
        "--data-dir", str(layout.state / "etcd"), "--name", "local",
        "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
        "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"local={peer_url}",
    ])  # fmt: skip
    started.append("etcd")
    wait("waiting for etcd /health", lambda: _http_ok(f"{etcd_url}/health"), timeouts.etcd)

    # Bound to docker0 only: pods reach it as kubernetes.default.svc (10.96.0.1 -> here).
    start("kube-apiserver", [
        "--etcd-servers", etcd_url,
        "--bind-address", BRIDGE_IP, "--advertise-address", BRIDGE_IP,
        "--secure-port", str(API_PORT), "--insecure-port", "0",
        "--tls-cert-file", str(cert), "--tls-private-key-file", str(key),
        "--client-ca-file", str(cert), "--token-auth-file", str(tokens),
        "--authorization-mode", "Node,RBAC",
        "--service-account-issuer", f"https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
        "--service-account-key-file", str(sa_pub),
        "--service-account-signing-key-file", str(sa_key),
        "--service-cluster-ip-range", SERVICE_CIDR,
        "--kubelet-preferred-address-types", "InternalIP",  # else `kubectl logs` fails
        "--cert-dir", str(pki / "apiserver"),
    ])  # fmt: skip
    started.append("kube-apiserver")
    wait("waiting for kube-apiserver /readyz", lambda: _api_ready(host, token, cert),
         timeouts.apiserver)  # fmt: skip
    core = _core_v1(info)

    start("kube-controller-manager", [
        "--kubeconfig", kubeconfig, "--bind-address", "127.0.0.1",
        "--port", "0", "--secure-port", "0", "--leader-elect=false",
        "--controllers", CONTROLLERS,
        "--service-account-private-key-file", str(sa_key), "--root-ca-file", str(cert),
    ])  # fmt: skip
    started.append("kube-controller-manager")
    wait("waiting for kube-controller-manager (the 'default' service account)",
         lambda: bool(core.read_namespaced_service_account("default", "default")),
         timeouts.controller_manager)  # fmt: skip

    start("kube-scheduler", [
        "--kubeconfig", kubeconfig, "--leader-elect=false", "--port", "0",
        "--bind-address", "127.0.0.1", "--secure-port", str(SCHEDULER_PORT),
    ])  # fmt: skip
    started.append("kube-scheduler")
    wait("waiting for kube-scheduler /healthz",
         lambda: _insecure_ok(f"https://127.0.0.1:{SCHEDULER_PORT}/healthz"),
         timeouts.scheduler)  # fmt: skip

    # Image GC and disk eviction off: the images cannot be pulled back, and the disk is
    # shared with other work.
    start("kubelet", [
        "--kubeconfig", kubeconfig,
        "--container-runtime", "docker", "--docker-endpoint", f"unix://{layout.docker_sock}",
        "--root-dir", str(layout.kubelet_dir), "--cert-dir", str(layout.kubelet_dir / "pki"),
        "--volume-plugin-dir", str(layout.kubelet_dir / "volume-plugins"),
        "--fail-swap-on=false", "--cgroup-driver", "cgroupfs",
        "--pod-infra-container-image", PAUSE_IMAGE,
        "--cluster-dns", BRIDGE_IP, "--cluster-domain", CLUSTER_DOMAIN,
        "--hostname-override", NODE_NAME, "--node-ip", BRIDGE_IP, "--address", BRIDGE_IP,
        "--read-only-port", "0", "--healthz-bind-address", "127.0.0.1",
        "--healthz-port", str(KUBELET_HEALTH_PORT),
        "--image-gc-high-threshold", "100", "--image-gc-low-threshold", "99",
        "--eviction-hard", "memory.available<100Mi,nodefs.available<1%,imagefs.available<1%",
    ])  # fmt: skip
    started.append("kubelet")
    wait("waiting for the node to be Ready", lambda: _node_ready(core), timeouts.node_ready)

    start("kube-proxy", [
        "--kubeconfig", kubeconfig, "--proxy-mode", "iptables",
        "--cluster-cidr", POD_CIDR, "--conntrack-max-per-core", "0",
        "--hostname-override", NODE_NAME,
        "--healthz-bind-address", f"127.0.0.1:{PROXY_HEALTH_PORT}",
        "--metrics-bind-address", "127.0.0.1:10249",
    ])  # fmt: skip
    started.append("kube-proxy")
    wait("waiting for kube-proxy /healthz",
         lambda: _http_ok(f"http://127.0.0.1:{PROXY_HEALTH_PORT}/healthz"),
         timeouts.proxy)  # fmt: skip

    spawn(
        layout,
        "cluster-dns",
        [sys.executable, "-m", "tests.e2e.cluster_dns", "--kubeconfig", kubeconfig,
         "--hosts-file", str(layout.dns_hosts), "--listen", BRIDGE_IP,
         "--domain", CLUSTER_DOMAIN],
        die_with_parent,
        cwd=REPO_ROOT,
    )  # fmt: skip
    started.append("cluster-dns")
    wait("waiting for the cluster DNS to answer kubernetes.default.svc",
         lambda: dns_query(BRIDGE_IP, "kubernetes.default.svc") == [API_SERVICE_IP],
         timeouts.dns)  # fmt: skip
    return info


def _processes_under(root: Path) -> list[int]:
    """Processes whose command line names the cluster's folder: ours, whoever started them."""
    marker = str(root).rstrip("/") + "/"
    me = os.getpid()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        if any(marker in arg or arg == marker[:-1] for arg in cmdline(int(entry.name))):
            pids.append(int(entry.name))
    return pids


def kube_chains() -> list[str]:
    """Every KUBE- chain left in any table, IPv4 and IPv6 (`table/chain`)."""
    chains = []
    for save in ("iptables-save", "ip6tables-save"):
        if not shutil.which(save):
            continue
        table = ""
        for line in run([save], 60).stdout.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":KUBE-"):
                chains.append(f"{save.split('-')[0]}:{table}/{line[1:].split()[0]}")
    return chains


def _remove_kube_chains() -> None:
    """What `kube-proxy --cleanup` leaves (the kubelet's KUBE-FIREWALL, KUBE-MARK-*...)."""
    for family in ("iptables", "ip6tables"):
        save, restore = f"{family}-save", f"{family}-restore"
        if not (shutil.which(save) and shutil.which(restore)):
            continue
        saved = run([save], 60).stdout
        if "KUBE-" not in saved:
            continue
        kept = "\n".join(line for line in saved.splitlines() if "KUBE-" not in line) + "\n"
        run([restore], 60, input=kept)


def down(layout: Layout | None = None, timeouts: Timeouts | None = None) -> list[str]:
    """Stop the cluster and remove what it (or an interrupted earlier run) left behind.

    Idempotent; safe on a machine where nothing ever ran. Keeps the docker data (the image
    cache) and the logs. A step that fails is noted and the next one still runs (what is
    left then shows in :func:`leftovers`). Returns notes on what had to be cleaned.
    """
    layout = layout or Layout.from_env()
    timeouts = timeouts or Timeouts.from_env()
    notes: list[str] = []

    def stop(*names: str) -> None:
        for name in names:
            pid = read_pidfile(layout, name)
            if pid is not None:
                terminate([pid], timeouts.stop)
            layout.pidfile(name).unlink(missing_ok=True)

    def remove_containers() -> None:
        containers_dir = layout.docker_data / "containers"
        if not (containers_dir.is_dir() and any(containers_dir.iterdir())):
            return
        # A dockerd (restarted if it died) removes its containers and their mounts properly.
        start_dockerd(layout, timeouts, die_with_parent=True)
        docker = docker_command(layout)
        ids = run([*docker, "ps", "-aq"], 60).stdout.split()
        if ids:
            run([*docker, "rm", "-f", "-v", *ids], timeouts.stop * 4)
            notes.append(f"removed {len(ids)} containers")

    def clean_iptables() -> None:
        proxy = assets_dir() / "kube-proxy"
        if kube_chains() and os.access(proxy, os.X_OK):
            run([str(proxy), "--cleanup"], 120)
        if kube_chains():
            _remove_kube_chains()
            notes.append("removed KUBE- chains kube-proxy --cleanup left")

    def end_strays() -> None:
        strays = _processes_under(layout.root)
        if strays:
            notes.append(f"ended leftover processes {strays}")
            terminate(strays, timeouts.stop)

    def unmount() -> None:
        unmounted = unmount_under(layout.root)
        if unmounted:
            notes.append(f"unmounted {len(unmounted)} mounts")

    steps: list[tuple[str, Callable[[], None]]] = [
        # The kubelet first, so nothing restarts the containers removed next.
        ("stop the node", lambda: stop("kubelet", "kube-proxy", "cluster-dns", "kube-scheduler",
                                       "kube-controller-manager")),
        ("remove containers", remove_containers),
        ("stop dockerd", lambda: stop("dockerd")),
        ("remove iptables rules", clean_iptables),
        ("stop the control plane", lambda: stop("kube-apiserver", "etcd")),
        ("end leftover processes", end_strays),
        ("unmount", unmount),
    ]  # fmt: skip
    for what, step in steps:
        try:
            step()
        except Exception as exc:
            notes.append(f"{what} failed: {type(exc).__name__}: {exc}")
    shutil.rmtree(layout.state, ignore_errors=True)
    shutil.rmtree(layout.cache / "rootfs", ignore_errors=True)
    for stale in layout.run.glob("*.pid") if layout.run.is_dir() else []:
        stale.unlink(missing_ok=True)
    return notes


def running_info(layout: Layout | None = None) -> ClusterInfo | None:
    """The running cluster's info if every daemon is alive and the node is Ready, else None."""
    layout = layout or Layout.from_env()
    info = ClusterInfo.load(layout.info_file)
    if info is None or any(read_pidfile(layout, name) is None for name in DAEMONS):
        return None
    try:
        if _api_ready(info.host, info.token, Path(info.ca_file)) and _node_ready(_core_v1(info)):
            return info
    except Exception:
        return None
    return None


def leftovers(layout: Layout | None = None) -> list[str]:
    """What a stopped cluster must not leave: containers, KUBE- chains, mounts, processes."""
    layout = layout or Layout.from_env()
    found = [f"iptables chain {chain}" for chain in kube_chains()]
    found += [f"mount {point}" for point in mount_points() if point.startswith(str(layout.root))]
    found += [f"process {pid}: {' '.join(cmdline(pid))[:120]}"
              for pid in _processes_under(layout.root)]  # fmt: skip
    containers = layout.docker_data / "containers"
    if containers.is_dir():
        found += [f"container {entry.name[:12]}" for entry in containers.iterdir()]
    return found


@dataclass
class NodeCluster:
    """A running node cluster as tests see it (the ``node_cluster`` fixture)."""

    info: ClusterInfo
    layout: Layout
    image: str
    hostpath_root: Path
    timeouts: Timeouts
    _clients: list[Any] = field(default_factory=list, repr=False)

    @property
    def kubeconfig(self) -> Path:
        return Path(self.info.kubeconfig)

    @property
    def node_name(self) -> str:
        return self.info.node_name

    def api_client(self) -> ApiClient:
        """A cluster-admin ApiClient (closed at the end of the session)."""
        api_client = _api_client(self.info)
        self._clients.append(api_client)
        return api_client

    def core_v1(self) -> CoreV1Api:
        from kubernetes import client

        return client.CoreV1Api(self.api_client())

    def allocatable(self) -> tuple[int, int]:
        """The node's allocatable (CPU in millicores, memory in bytes)."""
        from kubernetes.utils import parse_quantity

        status = self.core_v1().read_node(self.node_name).status.allocatable
        return int(parse_quantity(status["cpu"]) * 1000), int(parse_quantity(status["memory"]))

    def create_namespace(self, prefix: str = "e2e") -> str:
        """A fresh namespace whose ``default`` service account pods can already use.

        Pods are refused until the token controller gave the account its token Secret
        (API 1.20), so this waits for that.
        """
        from kubernetes import client

        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        core = self.core_v1()
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        deadline = time.monotonic() + self.timeouts.namespace
        while True:
            with contextlib.suppress(Exception):
                if core.read_namespaced_service_account("default", name).secrets:
                    return name
            if time.monotonic() >= deadline:
                raise TimeoutError(f"namespace {name}: no usable 'default' service account "
                                   f"after {self.timeouts.namespace:.0f}s")  # fmt: skip
            time.sleep(0.2)

    def delete_namespace(self, name: str) -> None:
        """Delete ``name`` without waiting (the namespace controller finishes it)."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.core_v1().delete_namespace(name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def docker(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the docker client against the cluster's dockerd."""
        return run([*docker_command(self.layout), *args], timeout)

    def close(self) -> None:
        for api_client in self._clients:
            with contextlib.suppress(Exception):
                api_client.close()
        self._clients.clear()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.e2e.node_cluster",
        description="Start, stop or inspect the e2e tests' one-node Kubernetes cluster "
        "(FL_E2E_ROOT, default /var/lib/fl-kubeflow-e2e). Run from the repository root.",
    )
    parser.add_argument("command", choices=["up", "down", "status", "image", "leftovers"])
    command = parser.parse_args(argv).command
    layout, timeouts = Layout.from_env(), Timeouts.from_env()
    if command in ("up", "image"):
        problem = prerequisites_problem()
        if problem:
            print(problem, file=sys.stderr)
            return 2
    if command == "up":
        info = up(layout, timeouts, owner="manual")
        tag, _ = build_project_image(layout, timeouts)
        print(json.dumps({"kubeconfig": info.kubeconfig, "image": tag, "timings": info.timings}))
    elif command == "image":
        if running_info(layout) is None:
            start_dockerd(layout, timeouts, die_with_parent=False)
            ensure_base_image(layout, timeouts)
        print(build_project_image(layout, timeouts)[0])
    elif command == "down":
        for note in down(layout, timeouts):
            print(note)
    elif command == "status":
        info = running_info(layout)
        print(json.dumps(asdict(info) if info else {"running": False}, indent=2))
        return 0 if info else 1
    else:
        found = leftovers(layout)
        print("\n".join(found) if found else "nothing left behind")
        return 1 if found else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
