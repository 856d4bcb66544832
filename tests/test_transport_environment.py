"""The client's Transport reads once what requests read from the environment on each
request (proxies, NO_PROXY, the CA bundle, ~/.netrc), with requests' rules: requests'
own answer for the same environment is the reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from fl_kubeflow.client.http_environment import read_environment
from fl_kubeflow.client.transport import Transport


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3129")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost,10.2.0.0/16,.internal.example")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/env/ca.pem")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine fl.example login user password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    return monkeypatch


@pytest.mark.parametrize(
    ("url", "verify"),
    [
        ("http://10.1.2.3:8080", True),
        ("http://10.2.7.9:8080", True),  # in NO_PROXY's network
        ("http://127.0.0.1:8080", True),
        ("http://fl.internal.example:8080", True),
        ("https://fl.example:8443", True),
        ("https://fl.example:8443", False),
        ("https://fl.example:8443", "/own/ca.pem"),
    ],
)
def test_settings_are_those_requests_would_take_per_request(
    environment: pytest.MonkeyPatch, url: str, verify: bool | str
) -> None:
    reference = requests.Session()  # trust_env: what requests reads for each request
    expected = reference.merge_environment_settings(url, {}, None, verify, None)
    scheme = url.split(":")[0]
    read = read_environment(url, verify)
    assert read.proxy == expected["proxies"].get(scheme)
    assert read.verify == expected["verify"]
    assert read.login == requests.utils.get_netrc_auth(url)


def test_the_transport_sends_the_netrc_login_as_requests_would(environment) -> None:
    url = "https://fl.example:8443"
    transport = Transport(url)
    prepared = requests.Session().prepare_request(requests.Request("GET", url + "/v1/status"))
    assert transport.headers["Authorization"] == prepared.headers["Authorization"]
    assert transport.proxy == "http://proxy.example:3129"
    assert transport.verify == "/env/ca.pem"


def test_an_explicit_authorization_header_wins_over_netrc(environment) -> None:
    transport = Transport("https://fl.example:8443", headers={"Authorization": "Bearer t"})
    assert transport.headers["Authorization"] == "Bearer t"
