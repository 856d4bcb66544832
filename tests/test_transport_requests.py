"""The client's Transport on urllib3, against real HTTP servers on loopback: TLS verified
with a CA bundle (given, or from REQUESTS_CA_BUNDLE), the proxy from the environment,
the read timeout, 4xx raised at once, 5xx retried, the token header on every request."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fl_kubeflow.client.transport import ServerError, ServerUnreachable, Transport
from tests.test_tls import make_certificates


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append((self.requestline, {k.lower(): v for k, v in self.headers.items()}))
        status, body = self.server.answers.pop(0) if self.server.answers else (200, {"ok": 1})
        encoded = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(encoded)))
        self.end_headers()
        self.wfile.write(encoded)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    seen: list
    answers: list


def _serve(context: ssl.SSLContext | None = None) -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.seen, httpd.answers = [], []
    if context is not None:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    yield from _serve()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    try:
        return make_certificates(tmp_path_factory.mktemp("pki"))
    except FileNotFoundError:
        pytest.skip("openssl is not installed: cannot make test certificates")


@pytest.fixture
def tls_server(certs) -> Iterator[_Server]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs["server.crt"], certs["server.key"])
    yield from _serve(context)


def test_tls_is_verified_with_the_given_ca_bundle(tls_server, certs, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    url = f"https://127.0.0.1:{tls_server.server_port}"
    transport = Transport(url, verify=str(certs["ca.crt"]), headers={"Authorization": "Bearer t"})
    for _ in range(2):
        assert transport.request("GET", "/healthz").json() == {"ok": 1}
    assert [headers["authorization"] for _, headers in tls_server.seen] == ["Bearer t"] * 2
    transport.close()


def test_tls_uses_requests_ca_bundle_when_verify_is_true(tls_server, certs, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certs["ca.crt"]))
    url = f"https://127.0.0.1:{tls_server.server_port}"
    assert Transport(url).request("GET", "/healthz").status_code == 200


def test_a_certificate_that_does_not_verify_fails_at_once(tls_server, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    transport = Transport(f"https://127.0.0.1:{tls_server.server_port}", retry_timeout=60)
    started = time.monotonic()
    with pytest.raises(ServerUnreachable, match="TLS verification failed"):
        transport.request("GET", "/healthz")
    assert time.monotonic() - started < 5  # not after the 60 s retry deadline
    assert tls_server.seen == []


def test_verify_false_accepts_any_certificate(tls_server):
    url = f"https://127.0.0.1:{tls_server.server_port}"
    with pytest.warns(Warning):  # urllib3's InsecureRequestWarning, as through requests
        assert Transport(url, verify=False).request("GET", "/healthz").status_code == 200


def test_requests_go_through_the_proxy_of_the_environment(server, monkeypatch):
    # The "proxy" answers itself: the absolute URI in its request line shows it was asked.
    monkeypatch.setenv("HTTP_PROXY", f"http://user:pw@127.0.0.1:{server.server_port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    transport = Transport("http://fl-server.example:8080")
    transport.request("GET", "/v1/status", params={"round": 3})
    [(line, headers)] = server.seen
    assert line == "GET http://fl-server.example:8080/v1/status?round=3 HTTP/1.1"
    assert headers["proxy-authorization"] == "Basic dXNlcjpwdw=="


def test_no_proxy_connects_directly(server, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    transport = Transport(f"http://127.0.0.1:{server.server_port}", retry_timeout=0.5)
    assert transport.request("GET", "/healthz").status_code == 200
    assert server.seen[0][0] == "GET /healthz HTTP/1.1"


def test_a_silent_server_ends_in_a_read_timeout():
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (the backlog), never answers
    try:
        port = listener.getsockname()[1]
        transport = Transport(f"http://127.0.0.1:{port}", retry_timeout=0.5, backoff_initial=0.05)
        started = time.monotonic()
        with pytest.raises(ServerUnreachable, match=r"(?i)read timed out"):
            transport.request("GET", "/healthz", read_timeout=0.2)
        assert time.monotonic() - started < 3
    finally:
        listener.close()


def test_4xx_is_raised_at_once_with_the_servers_reason(server):
    server.answers = [(409, {"error": "conflict", "message": "already counted"})]
    with pytest.raises(ServerError) as raised:
        Transport(f"http://127.0.0.1:{server.server_port}").request("GET", "/v1/model")
    assert (raised.value.status, raised.value.code, raised.value.message) == (
        409,
        "conflict",
        "already counted",
    )
    assert len(server.seen) == 1


def test_5xx_is_retried_until_an_answer(server):
    server.answers = [(503, {"message": "starting"}), (502, {})]
    transport = Transport(f"http://127.0.0.1:{server.server_port}", backoff_initial=0.01)
    assert transport.request("GET", "/healthz").json() == {"ok": 1}
    assert len(server.seen) == 3


def test_nan_in_a_json_body_is_refused_before_sending(server):
    transport = Transport(f"http://127.0.0.1:{server.server_port}")
    with pytest.raises(ValueError):
        transport.request("POST", "/v1/evaluate", json={"loss": float("nan")})
    assert server.seen == []


def test_a_base_url_with_a_path_keeps_it(server):
    transport = Transport(f"http://127.0.0.1:{server.server_port}/fl/run-1/")
    transport.request("GET", "/healthz", params={"a": "b c"})
    assert server.seen[0][0] == "GET /fl/run-1/healthz?a=b+c HTTP/1.1"


def test_headers_updated_between_requests_are_sent(server):
    # FederatedClient replaces the token this way after a 401 (refresh_headers).
    transport = Transport(f"http://127.0.0.1:{server.server_port}", headers={"Authorization": "a"})
    transport.request("GET", "/healthz")
    transport.headers.update({"Authorization": "b"})
    transport.request("GET", "/healthz", headers={"X-Extra": "1"})
    assert [headers["authorization"] for _, headers in server.seen] == ["a", "b"]
    assert server.seen[1][1]["x-extra"] == "1"
