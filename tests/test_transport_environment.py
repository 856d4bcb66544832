"""The client's Transport reads requests' environment settings once, as requests would
on each request (proxies, NO_PROXY, the CA bundle, ~/.netrc): the same settings, without
walking the environment for every request."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from fl_kubeflow.client.transport import Transport


@pytest.mark.parametrize(
    ("url", "verify"),
    [
        ("http://10.1.2.3:8080", True),
        ("http://127.0.0.1:8080", True),
        ("https://fl.example:8443", True),
        ("https://fl.example:8443", False),
        ("https://fl.example:8443", "/own/ca.pem"),
    ],
)
def test_settings_are_those_requests_would_take_per_request(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, verify: bool | str
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3129")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/env/ca.pem")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine fl.example login user password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    reference = requests.Session()  # trust_env: what requests reads for each request
    expected = reference.merge_environment_settings(url, {}, None, verify, None)
    login = requests.utils.get_netrc_auth(url)
    transport = Transport(url, verify=verify)
    assert transport.session.trust_env is False
    assert transport.session.proxies == expected["proxies"]
    assert transport.verify == expected["verify"]
    assert transport.session.auth == login
    # And a request prepared by the transport's session carries the same proxy and login.
    prepared = transport.session.prepare_request(requests.Request("GET", url + "/v1/status"))
    assert prepared.headers.get("Authorization") == (
        reference.prepare_request(requests.Request("GET", url + "/v1/status")).headers.get(
            "Authorization"
        )
    )
