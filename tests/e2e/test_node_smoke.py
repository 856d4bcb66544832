"""The node cluster works end to end: the project's image runs as pods, which reach each other
through a ClusterIP Service by its DNS name, as the pipeline's clients reach their server.

A server pod runs the image's Python serving HTTP; a client pod (the same image) fetches
``http://NAME.NAMESPACE.svc:PORT`` and must get the server pod's own name back, and
``fl-kubeflow --help`` must work in the image. Teardown leaving nothing behind is checked by
the ``node_cluster`` fixture itself when it owns the cluster.
"""

from __future__ import annotations

from kubernetes import client

from tests.e2e.node_cluster import NodeCluster
from tests.test_kube_service import wait_for

POD_TIMEOUT = 180.0  # seconds for a pod to run or finish (scheduling + start on 2 cores)
PORT = 8080

# The server answers every GET with its pod's name (from the downward API).
SERVER_CODE = """
import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ["POD_NAME"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("", 8080), Handler).serve_forever()
"""
# The client retries until the server answers (it may start later), bounded by its own clock.
CLIENT_CODE = """
import sys, time, urllib.request
url, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while True:
    try:
        print(urllib.request.urlopen(url, timeout=5).read().decode(), flush=True)
        break
    except OSError as exc:
        if time.monotonic() > deadline:
            raise
        print("retrying:", exc, flush=True)
        time.sleep(0.5)
"""


def _pod(name: str, image: str, args: list[str], labels: dict[str, str]) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(
            restart_policy="Never",
            termination_grace_period_seconds=5,
            containers=[
                client.V1Container(
                    name="main",
                    image=image,
                    image_pull_policy="Never",  # built here; nothing can be pulled
                    args=args,
                    env=[
                        client.V1EnvVar(
                            name="POD_NAME",
                            value_from=client.V1EnvVarSource(
                                field_ref=client.V1ObjectFieldSelector(field_path="metadata.name")
                            ),
                        )
                    ],
                    resources=client.V1ResourceRequirements(
                        requests={"cpu": "100m", "memory": "64Mi"}
                    ),
                )
            ],
        ),
    )


def _phase(core: client.CoreV1Api, name: str, namespace: str) -> str:
    return str(core.read_namespaced_pod(name, namespace).status.phase)


def _logs(core: client.CoreV1Api, name: str, namespace: str) -> str:
    return str(core.read_namespaced_pod_log(name, namespace))


def test_pods_reach_a_service_by_dns_name(node_cluster: NodeCluster, namespace: str) -> None:
    core = node_cluster.core_v1()
    labels = {"app": "smoke-server"}
    core.create_namespaced_pod(
        namespace, _pod("server", node_cluster.image, ["python", "-c", SERVER_CODE], labels)
    )
    core.create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="smoke"),
            spec=client.V1ServiceSpec(
                selector=labels, ports=[client.V1ServicePort(port=PORT, target_port=PORT)]
            ),
        ),
    )
    url = f"http://smoke.{namespace}.svc:{PORT}/"
    core.create_namespaced_pod(
        namespace,
        _pod("client", node_cluster.image, ["python", "-c", CLIENT_CODE, url, "120"], {}),
    )
    core.create_namespaced_pod(
        namespace, _pod("cli", node_cluster.image, ["fl-kubeflow", "--help"], {})
    )

    for name in ("client", "cli"):
        phase = wait_for(
            f"pod {name} to finish",
            lambda name=name: (p := _phase(core, name, namespace)) in ("Succeeded", "Failed") and p,
            POD_TIMEOUT,
        )
        assert phase == "Succeeded", f"{name}: {phase}\n{_logs(core, name, namespace)}"
    assert _logs(core, "client", namespace).strip().splitlines()[-1] == "server"
    assert "usage: fl-kubeflow" in _logs(core, "cli", namespace)

    service = core.read_namespaced_service("smoke", namespace)
    assert service.spec.cluster_ip.startswith("10.96.")
    assert _phase(core, "server", namespace) == "Running"


def test_node_facts(node_cluster: NodeCluster) -> None:
    cpu_millis, memory_bytes = node_cluster.allocatable()
    assert cpu_millis >= 1000 and memory_bytes >= 1 << 30
    assert node_cluster.kubeconfig.is_file()
    assert node_cluster.hostpath_root.is_dir()
    inspect = node_cluster.docker("image", "inspect", node_cluster.image)
    assert inspect.returncode == 0, inspect.stderr
