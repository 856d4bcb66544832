"""``fl-kubeflow submit`` against a local HTTP server speaking the KFP v2beta1 REST API.

The server answers the calls kfp.Client makes for ``create_run_from_pipeline_package``
(healthz, experiment lookup/creation, run creation, run status; see
kfp/client/client.py) and records them, so the test sees exactly what would reach a
real KFP API server. The CLI runs as a real process with its own HOME, so no local
kfp context file can leak in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "fl_pipeline.yaml"
API = "/apis/v2beta1"


@dataclass
class FakeKfp:
    """Recorded requests and canned answers of the fake KFP API server."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    experiments: dict[str, str] = field(default_factory=dict)
    final_state: str = "SUCCEEDED"

    def calls(self, method: str, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and r["path"] == path]


def _handler(state: FakeKfp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> tuple[str, dict[str, list[str]], Any]:
            parsed = urllib.parse.urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            query = urllib.parse.parse_qs(parsed.query)
            state.requests.append(
                {"method": self.command, "path": parsed.path, "query": query, "body": body}
            )
            return parsed.path, query, body

        def do_GET(self) -> None:
            path, query, _ = self._record()
            if path == f"{API}/healthz":
                self._answer(200, {"multi_user": False})
            elif path == f"{API}/experiments":
                wanted = json.loads(query["filter"][0])["predicates"][0]["stringValue"]
                found = [
                    {"experiment_id": eid, "display_name": name}
                    for name, eid in state.experiments.items()
                    if name == wanted
                ]
                self._answer(200, {"experiments": found, "total_size": len(found)})
            elif path.startswith(f"{API}/runs/"):
                run_id = path.rsplit("/", 1)[1]
                self._answer(200, {"run_id": run_id, "state": state.final_state})
            else:
                self._answer(404, {"error": f"no route {path}"})

        def do_POST(self) -> None:
            path, _, body = self._record()
            if path == f"{API}/experiments":
                eid = f"exp-{len(state.experiments) + 1}"
                state.experiments[body["display_name"]] = eid
                self._answer(200, {"experiment_id": eid, "display_name": body["display_name"]})
            elif path == f"{API}/runs":
                self._answer(
                    200,
                    {"run_id": "run-123", "display_name": body["display_name"], "state": "PENDING"},
                )
            else:
                self._answer(404, {"error": f"no route {path}"})

    return Handler


@pytest.fixture
def kfp_api() -> Iterator[FakeKfp]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    state = FakeKfp(url=f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _handler(state)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def submit(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KF_PIPELINES")}
    env.update(HOME=str(home), PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "fl_kubeflow", "submit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )


def test_submit_sends_the_pipeline_and_typed_parameters(kfp_api: FakeKfp, tmp_path: Path) -> None:
    done = submit(
        tmp_path,
        "--host",
        kfp_api.url,
        "--package",
        str(PACKAGE),
        "--experiment",
        "fl-tests",
        "--run-name",
        "fl-run-1",
        "--param",
        "num_clients=4",
        "--param",
        "learning_rate=0.1",
        "--param",
        "dataset=mnist",
        "--param",
        "server_address=",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["run_id"] == "run-123"

    (created_experiment,) = kfp_api.calls("POST", f"{API}/experiments")
    assert created_experiment["body"]["display_name"] == "fl-tests"
    (run,) = kfp_api.calls("POST", f"{API}/runs")
    body = run["body"]
    assert body["display_name"] == "fl-run-1"
    assert body["experiment_id"] == "exp-1"
    assert body["runtime_config"]["parameters"] == {
        "num_clients": 4,
        "learning_rate": 0.1,
        "dataset": "mnist",
        "server_address": "",
    }
    assert isinstance(body["runtime_config"]["parameters"]["num_clients"], int)
    # The spec sent is the package, both documents: pipeline and Kubernetes platform.
    pipeline, platform = yaml.safe_load_all(PACKAGE.read_text())
    sent = body["pipeline_spec"]
    assert sent["pipeline_spec"]["pipelineInfo"]["name"] == pipeline["pipelineInfo"]["name"]
    assert sent["pipeline_spec"]["root"] == pipeline["root"]
    assert sent["pipeline_spec"]["deploymentSpec"] == pipeline["deploymentSpec"]
    assert sent["platform_spec"] == platform


def test_existing_experiment_is_reused_and_wait_reports_the_state(
    kfp_api: FakeKfp, tmp_path: Path
) -> None:
    kfp_api.experiments["fl-kubeflow"] = "exp-existing"
    kfp_api.final_state = "FAILED"
    done = submit(tmp_path, "--host", kfp_api.url, "--package", str(PACKAGE), "--wait", "30")
    assert done.returncode == 1, done.stderr  # the run failed
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "run_id": "run-123",
        "state": "FAILED",
    }
    assert not kfp_api.calls("POST", f"{API}/experiments")
    (run,) = kfp_api.calls("POST", f"{API}/runs")
    assert run["body"]["experiment_id"] == "exp-existing"
    assert run["body"]["runtime_config"].get("parameters", {}) == {}
    assert kfp_api.calls("GET", f"{API}/runs/run-123")


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("num_clientz=3", "no parameter 'num_clientz'"),
        ("num_clients=three", "num_clients='three': num_clients takes an integer"),
        ("learning_rate=fast", "learning_rate='fast': learning_rate takes a number"),
        ("num_rounds=2.5", "num_rounds takes an integer"),
        ("num_clients=0", "num_clients=0: must be at least 1"),
        ("min_clients=7", "min_clients=7: exceeds num_clients=3"),
        ("optimizer=rmsprop", "optimizer='rmsprop': must be sgd or adam"),
        ("no-equals-sign", "expected KEY=VALUE"),
    ],
)
def test_bad_param_is_a_clear_cli_error(
    kfp_api: FakeKfp, tmp_path: Path, param: str, message: str
) -> None:
    done = submit(tmp_path, "--host", kfp_api.url, "--package", str(PACKAGE), "--param", param)
    assert done.returncode == 2
    assert message in done.stderr, done.stderr
    assert kfp_api.requests == []  # refused before anything was sent


@pytest.fixture(scope="module")
def package_parameters() -> dict[str, dict[str, Any]]:
    from fl_kubeflow.cli.submit_cmd import pipeline_parameters

    return pipeline_parameters(PACKAGE)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (["secagg_options=bits=64"], "secagg_options 'bits=64' need secure_aggregation=true"),
        (["secure_aggregation=true", "secagg_options=bits=48"], "bits must be one of"),
        (["secure_aggregation=true", "strategy=krum"], "needs every client's update"),
        (["secure_aggregation=true", "num_clients=2"], "at least 3 clients"),
    ],
)
def test_secure_aggregation_that_cannot_work_is_refused_before_submitting(
    package_parameters: dict[str, dict[str, Any]], params: list[str], message: str
) -> None:
    # In-process: what submit checks before it sends anything (the CLI path is above).
    from fl_kubeflow.cli.submit_cmd import ParamError, parse_params

    parameters = package_parameters
    with pytest.raises(ParamError, match=r"^--param (secure_aggregation|secagg_options)="):
        try:
            parse_params(params, parameters)
        except ParamError as exc:
            assert message in str(exc)
            raise
    assert parse_params(["secure_aggregation=true"], parameters)["secure_aggregation"] is True


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (["async_options=buffer_size=2"], "async_options 'buffer_size=2' need mode=async"),
        (["mode=fast"], "mode must be sync or async, got 'fast'"),
        (["mode=async", "async_options=max_staleness=-1"], "max_staleness must be >= 0"),
        (["mode=async", "async_options=buffer=2"], "unknown async option(s) buffer"),
        (["mode=async", "async_options=buffer_size=4"], "more than the 3 clients"),
        (["mode=async", "strategy=krum"], "krum"),
        (["mode=async", "secure_aggregation=true"], "needs synchronous rounds"),
    ],
)
def test_async_mode_that_cannot_work_is_refused_before_submitting(
    package_parameters: dict[str, dict[str, Any]], params: list[str], message: str
) -> None:
    from fl_kubeflow.cli.submit_cmd import ParamError, parse_params

    with pytest.raises(ParamError, match=r"^--param (mode|async_options)=") as caught:
        parse_params(params, package_parameters)
    assert message in str(caught.value)
    given = parse_params(["mode=async", "async_options=buffer_size=2"], package_parameters)
    assert given == {"mode": "async", "async_options": "buffer_size=2"}


def test_missing_package_is_compiled_then_submitted(kfp_api: FakeKfp, tmp_path: Path) -> None:
    package = tmp_path / "out" / "fresh.yaml"
    image = "registry.example.com/fl-kubeflow:test"
    done = submit(tmp_path, "--host", kfp_api.url, "--package", str(package), "--image", image)
    assert done.returncode == 0, done.stderr
    assert package.is_file()
    (run,) = kfp_api.calls("POST", f"{API}/runs")
    executors = run["body"]["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values() if "container" in e}
    assert images == {image}


def test_unreachable_host_fails_with_the_reason(tmp_path: Path) -> None:
    done = submit(tmp_path, "--host", "http://127.0.0.1:9", "--package", str(PACKAGE))
    assert done.returncode == 1
    assert "could not create the run on http://127.0.0.1:9" in done.stderr
