"""What the cross-namespace federation scenario needs on the node cluster besides the runner.

A self-signed CA and a server certificate for the server's Service names (made here with
``cryptography``), and the rogue client: a plain Pod of the project's image
running ``rogue_client.py`` (standard library only) from a ConfigMap, whose JSON-lines log
says what the server and the Kubernetes API answered it.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.e2e.kfp_runner import wait_until

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api

ROGUE_SCRIPT = Path(__file__).with_name("rogue_client.py")
ROGUE_MOUNT = "/rogue"
CREDENTIAL_MOUNT = "/credential"


@dataclass(frozen=True)
class TlsFiles:
    """PEM texts: the CA clients trust, and the server's certificate and key."""

    ca_pem: str
    cert_pem: str
    key_pem: str


def make_tls(dns_names: list[str], ip_addresses: tuple[str, ...] = ()) -> TlsFiles:
    """A fresh CA and a server certificate it signed for these names (valid one day)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fl-kubeflow e2e CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return TlsFiles(ca.public_bytes(pem).decode(), cert.public_bytes(pem).decode(), key_pem)


def service_dns_names(service: str, namespace: str) -> list[str]:
    """The names a pod of another namespace may use for a Service."""
    return [
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        f"{service}.{namespace}",
    ]


@dataclass(frozen=True)
class RoguePod:
    """The rogue client's Pod, and a reader for the JSON lines it printed so far."""

    core: Any
    namespace: str
    name: str

    def records(self) -> dict[str, dict[str, Any]]:
        """Probe name -> what it got, for every probe line in the log so far."""
        try:
            log = self.log()
        except Exception:  # not started yet, or the log is not readable yet
            return {}
        found = {}
        for line in log.splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                found[record["probe"]] = record
        return found

    def wait_for(self, probe: str, timeout: float) -> dict[str, Any]:
        """The record of ``probe`` once the pod printed it."""
        return wait_until(
            lambda: self.records().get(probe), timeout, f"rogue pod {self.name} to report {probe}"
        )

    def phase(self) -> str:
        return self.core.read_namespaced_pod(self.name, self.namespace).status.phase

    def log(self) -> str:
        # Unparsed: the client would otherwise turn a log that is one JSON line into a repr.
        answer = self.core.read_namespaced_pod_log(
            self.name, self.namespace, _preload_content=False
        )
        return answer.data.decode()


def start_rogue_pod(
    core: CoreV1Api,
    *,
    namespace: str,
    image: str,
    credential_secret: str,
    server: str,
    impersonate: str,
    foreign_namespace: str,
    revocation_timeout: float,
    wait_submitted: int = 0,
    service_account: str = "default",
) -> RoguePod:
    """Start the rogue client in ``namespace`` with its own credential Secret mounted.

    The script runs from a ConfigMap, so nothing but the project's image is needed.
    """
    name = "rogue-client"
    core.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": name}, "data": {ROGUE_SCRIPT.name: ROGUE_SCRIPT.read_text()}},
    )
    args = [
        f"{ROGUE_MOUNT}/{ROGUE_SCRIPT.name}",
        "--server", server,
        "--credential", CREDENTIAL_MOUNT,
        "--impersonate", impersonate,
        "--foreign-namespace", foreign_namespace,
        "--revocation-timeout", str(revocation_timeout),
        "--wait-submitted", str(wait_submitted),
    ]  # fmt: skip
    manifest = {
        "metadata": {"name": name, "labels": {"app": "rogue-client"}},
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": service_account,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-u"],
                    "args": args,
                    "resources": {
                        "requests": {"cpu": "50m", "memory": "64Mi"},
                        "limits": {"cpu": "500m", "memory": "256Mi"},
                    },
                    "volumeMounts": [
                        {"name": "script", "mountPath": ROGUE_MOUNT, "readOnly": True},
                        {"name": "credential", "mountPath": CREDENTIAL_MOUNT, "readOnly": True},
                    ],
                }
            ],
            "volumes": [
                {"name": "script", "configMap": {"name": name}},
                {"name": "credential", "secret": {"secretName": credential_secret}},
            ],
        },
    }
    core.create_namespaced_pod(namespace, manifest)
    return RoguePod(core, namespace, name)
