"""An envtest-style Kubernetes control plane for tests: etcd, kube-apiserver, controller-manager.

No containers and no kubelet: real API semantics (RBAC, ownerReferences + garbage collection,
the endpoints controller) for code that talks to the API server. Binaries are found via
``KUBEBUILDER_ASSETS``, else ``<repo>/.k8s-assets/``, else PATH; ``scripts/k8s-assets.sh``
prepares ``.k8s-assets/``. When they are missing the tests are skipped with that command.

Use the session-scoped ``k8s_cluster`` fixture (import it into a test module or conftest).
Flags and quirks: ``../shared/k8s/README.md`` (they match kube-apiserver v1.20.2).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.ports import free_port

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, CoreV1Api, RbacAuthorizationV1Api

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ASSETS_DIR = REPO_ROOT / ".k8s-assets"
PREPARE_COMMAND = "scripts/k8s-assets.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")

# Generous: the test machines have 2 shared cores; a healthy start takes ~10 s.
ETCD_TIMEOUT = 30.0
APISERVER_TIMEOUT = 90.0
CONTROLLER_MANAGER_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

# Controllers that need a cloud, node IPAM or CSR signing keys, none of which exist here.
CONTROLLERS = (
    "*,-nodelifecycle,-nodeipam,-csrsigning,-csrapproving,-csrcleaner,"
    "-cloud-node-lifecycle,-route,-service"
)


class ClusterStartError(RuntimeError):
    """A control-plane process failed to start or become ready."""


def find_binaries(environ: dict[str, str] | None = None) -> dict[str, Path] | str:
    """Return the binaries' paths, or a message saying exactly what is missing and why.

    An explicit ``KUBEBUILDER_ASSETS`` replaces ``.k8s-assets/`` (it says where to look);
    PATH is the last resort for each binary.
    """
    env = os.environ if environ is None else environ
    assets = env.get("KUBEBUILDER_ASSETS")
    if assets:
        search = [(Path(assets), f"KUBEBUILDER_ASSETS={assets}")]
    else:
        search = [(DEFAULT_ASSETS_DIR, str(DEFAULT_ASSETS_DIR))]
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in BINARIES:
        for directory, _ in search:
            candidate = directory / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                found[name] = candidate
                break
        else:
            on_path = shutil.which(name, path=env.get("PATH"))
            if on_path:
                found[name] = Path(on_path)
            else:
                missing.append(name)
    if missing:
        where = " or ".join(label for _, label in search)
        return (
            f"Kubernetes control-plane binaries not found: {', '.join(missing)} "
            f"(looked in {where}, then PATH). Prepare them with `{PREPARE_COMMAND}` "
            f"(unpacks kube-apiserver/kube-controller-manager from ../shared/k8s/ and links "
            f"etcd into .k8s-assets/), or set KUBEBUILDER_ASSETS to a directory holding them."
        )
    return found


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text[-lines:])


@dataclass
class K8sCluster:
    """A running control plane and factories for API clients against it."""

    host: str
    ca_file: Path
    admin_token: str
    workdir: Path
    kubeconfig: Path
    _clients: list[Any] = field(default_factory=list, repr=False)

    def api_client(self, token: str | None = None) -> ApiClient:
        """An ApiClient authenticating with ``token`` (default: the cluster-admin token)."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.host
        configuration.ssl_ca_cert = str(self.ca_file)
        configuration.api_key = {"authorization": token or self.admin_token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        api_client = client.ApiClient(configuration)
        self._clients.append(api_client)
        return api_client

    def core_v1(self, token: str | None = None) -> CoreV1Api:
        """CoreV1Api as admin, or as whoever ``token`` belongs to."""
        from kubernetes import client

        return client.CoreV1Api(self.api_client(token))

    def rbac_v1(self, token: str | None = None) -> RbacAuthorizationV1Api:
        """RbacAuthorizationV1Api as admin, or as whoever ``token`` belongs to."""
        from kubernetes import client

        return client.RbacAuthorizationV1Api(self.api_client(token))

    def create_namespace(self, prefix: str = "test") -> str:
        """Create a uniquely named namespace, so tests sharing the cluster never collide."""
        from kubernetes import client

        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.core_v1().create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        return name

    def service_account_token(self, namespace: str, name: str, timeout: float = 30.0) -> str:
        """Create service account ``name`` (if needed) and return a bearer token for it.

        Uses the TokenRequest API (served since 1.20 with the issuer/signing-key flags set
        here), so it needs no controller and is ready at once.
        """
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core = self.core_v1()
        with contextlib.suppress(ApiException):
            core.create_namespaced_service_account(
                namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
            )
        # Empty audiences: the API server fills in its own (the issuer).
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = core.create_namespaced_service_account_token(name, namespace, request)
                return str(response.status.token)
            except ApiException as exc:
                # 404 right after creating the account: the cache may lag a moment.
                if exc.status != 404 or time.monotonic() >= deadline:
                    raise

    def close_clients(self) -> None:
        """Close every ApiClient handed out (their connection pools)."""
        for api_client in self._clients:
            with contextlib.suppress(Exception):
                api_client.close()
        self._clients.clear()


def _set_parent_death_signal() -> None:
    """In the child: die with the test process, so a killed pytest leaks no servers."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _start(name: str, args: list[str], log_dir: Path) -> _Process:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        popen = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_set_parent_death_signal if sys.platform == "linux" else None,
        )
    return _Process(name, popen, log_path)


def _stop(processes: list[_Process]) -> None:
    """Terminate in reverse start order, then kill whatever outlives STOP_TIMEOUT."""
    for process in reversed(processes):
        if process.popen.poll() is None:
            process.popen.terminate()
            try:
                process.popen.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait(timeout=STOP_TIMEOUT)


def _wait_until(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    processes: list[_Process],
    interval: float = 0.25,
) -> None:
    """Poll ``check`` until true; fail fast if a process died, and fail at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        for process in processes:
            code = process.popen.poll()
            if code is not None:
                raise ClusterStartError(f"{process.name} exited with code {code} while {what}")
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() >= deadline:
            raise ClusterStartError(f"timed out after {timeout:.0f}s {what}")
        time.sleep(interval)


def _http_ok(url: str, token: str | None = None, context: ssl.SSLContext | None = None) -> bool:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _write_certificates(
    directory: Path,
    ip_sans: tuple[str, ...] = ("127.0.0.1",),
    dns_sans: tuple[str, ...] = ("localhost",),
) -> tuple[Path, Path, Path, Path]:
    """Self-signed serving cert (also the CA clients trust) and the service-account key pair.

    Uses the ``cryptography`` package when installed, else the openssl command. The serving
    certificate is valid for ``ip_sans`` and ``dns_sans``.
    """
    cert, key = directory / "serving.crt", directory / "serving.key"
    sa_key, sa_pub = directory / "sa.key", directory / "sa.pub"
    try:
        _write_certificates_cryptography(cert, key, sa_key, sa_pub, ip_sans, dns_sans)
    except ImportError:
        if not shutil.which("openssl"):
            pytest.skip(
                "cannot make test certificates: neither the `cryptography` package nor the "
                "`openssl` command is available"
            )
        _write_certificates_openssl(cert, key, sa_key, sa_pub, ip_sans, dns_sans)
    return cert, key, sa_key, sa_pub


def _write_certificates_cryptography(
    cert: Path,
    key: Path,
    sa_key: Path,
    sa_pub: Path,
    ip_sans: tuple[str, ...],
    dns_sans: tuple[str, ...],
) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def pem_private(private_key: rsa.RSAPrivateKey) -> bytes:
        return private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )

    serving_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fl-kubeflow-test-apiserver")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(serving_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.IPv4Address(ip)) for ip in ip_sans]
                + [x509.DNSName(name) for name in dns_sans]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(serving_key, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(pem_private(serving_key))

    signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_key.write_bytes(pem_private(signing_key))
    sa_pub.write_bytes(
        signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _write_certificates_openssl(
    cert: Path,
    key: Path,
    sa_key: Path,
    sa_pub: Path,
    ip_sans: tuple[str, ...],
    dns_sans: tuple[str, ...],
) -> None:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    sans = [f"IP:{ip}" for ip in ip_sans] + [f"DNS:{name}" for name in dns_sans]

    run(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-keyout", str(key), "-out", str(cert),
        "-subj", "/CN=fl-kubeflow-test-apiserver",
        "-addext", "subjectAltName=" + ",".join(sans),
    )  # fmt: skip
    run("genrsa", "-out", str(sa_key), "2048")
    run("rsa", "-in", str(sa_key), "-pubout", "-out", str(sa_pub))


def _kubeconfig(host: str, ca_file: Path, token: str) -> str:
    # JSON is valid YAML, and needs no YAML library here.
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "test", "cluster": {"server": host, "certificate-authority": str(ca_file)}}
            ],
            "users": [{"name": "admin", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
            "current-context": "test",
        },
        indent=2,
    )


@contextlib.contextmanager
def start_cluster(binaries: dict[str, Path], workdir: Path) -> Iterator[K8sCluster]:
    """Start etcd, kube-apiserver and kube-controller-manager in ``workdir``; stop on exit.

    Raises ClusterStartError, with every process's log tail, if any part fails to come up.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    processes: list[_Process] = []
    data_dir = workdir / "etcd-data"
    cluster: K8sCluster | None = None
    try:
        cert, key, sa_key, sa_pub = _write_certificates(workdir)
        admin_token = secrets.token_hex(16)
        tokens = workdir / "tokens.csv"
        tokens.write_text(f"{admin_token},admin,admin,system:masters\n")
        tokens.chmod(0o600)

        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        processes.append(
            _start(
                "etcd",
                [
                    str(binaries["etcd"]),
                    "--data-dir", str(data_dir),
                    "--name", "local",
                    "--listen-client-urls", etcd_url,
                    "--advertise-client-urls", etcd_url,
                    "--listen-peer-urls", peer_url,
                    "--initial-advertise-peer-urls", peer_url,
                    "--initial-cluster", f"local={peer_url}",
                ],
                workdir,
            )
        )  # fmt: skip
        _wait_until(
            "waiting for etcd /health",
            lambda: _http_ok(f"{etcd_url}/health"),
            ETCD_TIMEOUT,
            processes,
        )

        host = f"https://127.0.0.1:{api_port}"
        processes.append(
            _start(
                "kube-apiserver",
                [
                    str(binaries["kube-apiserver"]),
                    "--etcd-servers", etcd_url,
                    "--bind-address", "127.0.0.1",
                    "--advertise-address", "127.0.0.1",
                    "--secure-port", str(api_port),
                    "--insecure-port", "0",
                    "--tls-cert-file", str(cert),
                    "--tls-private-key-file", str(key),
                    "--client-ca-file", str(cert),
                    "--token-auth-file", str(tokens),
                    "--authorization-mode", "RBAC",
                    "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
                    "--service-account-key-file", str(sa_pub),
                    "--service-account-signing-key-file", str(sa_key),
                    "--service-cluster-ip-range", "10.96.0.0/16",
                    "--endpoint-reconciler-type", "none",
                    "--disable-admission-plugins", "ServiceAccount",
                    "--cert-dir", str(workdir / "apiserver-certs"),
                ],
                workdir,
            )
        )  # fmt: skip
        ssl_context = ssl.create_default_context(cafile=str(cert))
        _wait_until(
            "waiting for kube-apiserver /readyz",
            lambda: _http_ok(f"{host}/readyz", admin_token, ssl_context),
            APISERVER_TIMEOUT,
            processes,
        )

        kubeconfig = workdir / "admin.kubeconfig"
        kubeconfig.write_text(_kubeconfig(host, cert, admin_token))
        kubeconfig.chmod(0o600)
        processes.append(
            _start(
                "kube-controller-manager",
                [
                    str(binaries["kube-controller-manager"]),
                    "--kubeconfig", str(kubeconfig),
                    "--bind-address", "127.0.0.1",
                    "--port", "0",
                    "--secure-port", "0",
                    "--leader-elect=false",
                    "--controllers", CONTROLLERS,
                    "--service-account-private-key-file", str(sa_key),
                    "--root-ca-file", str(cert),
                ],
                workdir,
            )
        )  # fmt: skip

        cluster = K8sCluster(
            host=host, ca_file=cert, admin_token=admin_token, workdir=workdir, kubeconfig=kubeconfig
        )
        core = cluster.core_v1()
        # The serviceaccount controller creates "default" in every namespace: seeing it
        # proves the controller-manager is connected and its controllers are running.
        _wait_until(
            "waiting for kube-controller-manager (the 'default' service account)",
            lambda: bool(core.read_namespaced_service_account("default", "default")),
            CONTROLLER_MANAGER_TIMEOUT,
            processes,
        )
    except ClusterStartError as exc:
        # The last process started is the one that failed: its log first, and longest.
        logs = "\n\n".join(
            f"--- {p.name} ({p.log_path}), last lines ---\n{p.log_tail(60 if i == 0 else 15)}"
            for i, p in enumerate(reversed(processes))
        )
        if cluster is not None:
            cluster.close_clients()
        _stop(processes)
        shutil.rmtree(data_dir, ignore_errors=True)
        raise ClusterStartError(f"{exc}\n\n{logs}") from None
    except BaseException:
        if cluster is not None:
            cluster.close_clients()
        _stop(processes)
        shutil.rmtree(data_dir, ignore_errors=True)
        raise

    try:
        yield cluster
    finally:
        cluster.close_clients()
        _stop(processes)
        # etcd preallocates 64 MB WAL files; the logs stay for post-mortems.
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[K8sCluster]:
    """A control plane shared by the whole test session; skipped if binaries are missing."""
    pytest.importorskip("kubernetes", reason="the `kubernetes` package is not installed")
    binaries = find_binaries()
    if isinstance(binaries, str):
        pytest.skip(binaries)
    workdir = Path(tempfile.mkdtemp(prefix="fl-k8s-"))
    try:
        with start_cluster(binaries, workdir) as cluster:
            yield cluster
    except ClusterStartError as exc:
        pytest.fail(f"the test Kubernetes control plane did not start: {exc}", pytrace=False)
    else:
        # Keep the logs only when something failed to start; otherwise leave nothing behind.
        shutil.rmtree(workdir, ignore_errors=True)
