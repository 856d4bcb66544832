"""The node cluster's DNS: dnsmasq answering every Service's name, kept current by a watch.

Debian has no CoreDNS. This process runs dnsmasq as its child, watches Services in every
namespace, and on each change rewrites one hosts file (``IP name.ns.svc
name.ns.svc.<domain>`` per Service with a ClusterIP) and sends dnsmasq SIGHUP, which drops
its cache and re-reads the file, so a Service deleted and created again under the same name
(a replaced FL server) resolves to its new address at once. Started by
``tests/e2e/node_cluster.py``; ``python -m tests.e2e.cluster_dns --help``.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DNSMASQ_START_TIMEOUT = 30.0
RELIST_BACKOFF = 1.0  # seconds between attempts while the API server is unreachable
WATCH_SECONDS = 240  # the server ends a watch after this; we then watch again from there


def dns_query(server: str, name: str, timeout: float = 2.0) -> list[str]:
    """The A records ``server`` answers for ``name``: a bare-bones DNS client for readiness
    checks (raises OSError without a reply within ``timeout``)."""
    query_id = secrets.randbelow(65536)
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + question + b"\0\1\0\1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (server, 53))
        reply = sock.recv(4096)
    answers = struct.unpack(">H", reply[6:8])[0]
    offset = 12 + len(question) + 4
    addresses = []
    for _ in range(answers):
        if reply[offset] & 0xC0 == 0xC0:  # a compressed name: two bytes
            offset += 2
        else:
            while reply[offset]:
                offset += reply[offset] + 1
            offset += 1
        rtype, _, _, length = struct.unpack(">HHIH", reply[offset : offset + 10])
        offset += 10
        if rtype == 1 and length == 4:
            addresses.append(socket.inet_ntoa(reply[offset : offset + 4]))
        offset += length
    return addresses


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def hosts_lines(services: dict[tuple[str, str], str], domain: str) -> str:
    """The hosts file for ``{(namespace, name): cluster IP}``, sorted, one Service a line."""
    return "".join(
        f"{ip} {name}.{namespace}.svc {name}.{namespace}.svc.{domain}\n"
        for (namespace, name), ip in sorted(services.items())
    )


def _cluster_ip(service: Any) -> str | None:
    ip = service.spec.cluster_ip if service.spec else None
    return ip if ip and ip != "None" else None  # headless Services have no address


class Feeder:
    """Keeps ``hosts_file`` equal to the cluster's Services and dnsmasq in step with it."""

    def __init__(self, core: Any, hosts_file: Path, domain: str, dnsmasq: subprocess.Popen[bytes]):
        self.core, self.hosts_file, self.domain, self.dnsmasq = core, hosts_file, domain, dnsmasq
        self.services: dict[tuple[str, str], str] = {}
        self.written: str | None = None
        self.stop = threading.Event()

    def publish(self) -> None:
        content = hosts_lines(self.services, self.domain)
        if content == self.written:
            return
        temporary = self.hosts_file.with_name(f".{self.hosts_file.name}.tmp")
        temporary.write_text(content)
        temporary.chmod(0o644)  # dnsmasq reads it as "nobody"
        os.replace(temporary, self.hosts_file)
        self.dnsmasq.send_signal(signal.SIGHUP)
        self.written = content

    def run(self) -> None:
        from kubernetes import watch

        while not self.stop.is_set():
            try:
                listing = self.core.list_service_for_all_namespaces()
                self.services = {
                    (s.metadata.namespace, s.metadata.name): ip
                    for s in listing.items
                    if (ip := _cluster_ip(s))
                }
                self.publish()
                version = listing.metadata.resource_version
                stream = watch.Watch().stream(
                    self.core.list_service_for_all_namespaces,
                    resource_version=version,
                    timeout_seconds=WATCH_SECONDS,
                )
                for event in stream:
                    service = event["object"]
                    key = (service.metadata.namespace, service.metadata.name)
                    ip = _cluster_ip(service)
                    if event["type"] == "DELETED" or ip is None:
                        self.services.pop(key, None)
                    else:
                        self.services[key] = ip
                    self.publish()
                    if self.stop.is_set():
                        return
            except Exception as exc:  # an expired watch (410) or the API server restarting
                print(f"cluster-dns: re-listing after {type(exc).__name__}: {exc}", flush=True)
                self.stop.wait(RELIST_BACKOFF)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.cluster_dns", description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--hosts-file", required=True, type=Path)
    parser.add_argument("--listen", required=True, help="address dnsmasq answers on (docker0)")
    parser.add_argument("--domain", default="cluster.local")
    args = parser.parse_args(argv)

    from kubernetes import client, config

    args.hosts_file.parent.mkdir(parents=True, exist_ok=True)
    args.hosts_file.write_text("")
    args.hosts_file.chmod(0o644)
    # --local: names under these domains that are not in the file get NXDOMAIN at once
    # (so the resolver moves on through its search list); nothing is forwarded upstream.
    dnsmasq = subprocess.Popen(
        [shutil.which("dnsmasq") or "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
         "--log-facility=-", f"--listen-address={args.listen}", "--bind-interfaces",
         "--no-resolv", "--no-hosts", f"--addn-hosts={args.hosts_file}", "--pid-file=",
         f"--local=/{args.domain}/", "--local=/svc/"],
        preexec_fn=_die_with_parent,
    )  # fmt: skip
    deadline = time.monotonic() + DNSMASQ_START_TIMEOUT
    while True:  # SIGHUP before dnsmasq set its handler would kill it
        try:
            dns_query(args.listen, f"kubernetes.default.svc.{args.domain}", timeout=0.5)
            break
        except OSError:
            if dnsmasq.poll() is not None or time.monotonic() >= deadline:
                print("cluster-dns: dnsmasq did not start answering", flush=True)
                dnsmasq.kill()
                return 1
    feeder = Feeder(
        client.CoreV1Api(config.new_client_from_config(args.kubeconfig)),
        args.hosts_file,
        args.domain,
        dnsmasq,
    )

    def on_signal(signo: int, _frame: object) -> None:
        feeder.stop.set()
        dnsmasq.terminate()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def watch_dnsmasq() -> None:
        code = dnsmasq.wait()
        if not feeder.stop.is_set():
            print(f"cluster-dns: dnsmasq exited with {code}", flush=True)
            os._exit(1)  # so the cluster's health checks see the DNS gone

    threading.Thread(target=watch_dnsmasq, daemon=True).start()
    feeder.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
