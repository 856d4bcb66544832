"""Service names, selectors and URLs derived from the KFP run UUID (pure, no cluster)."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fl_kubeflow.kube.naming import (
    DEFAULT_PORT,
    RUN_ID_LABEL,
    SERVER_ROLE,
    SERVER_ROLE_LABEL,
    server_selector,
    server_url,
    service_name,
)

# What the API server enforces for a Service name (DNS-1035 label).
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
RUN_ID = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"


def test_constants_match_the_design() -> None:
    assert RUN_ID_LABEL == "pipeline/runid"
    assert (SERVER_ROLE_LABEL, SERVER_ROLE) == ("fl-kubeflow/role", "server")
    assert DEFAULT_PORT == 8080


def test_digit_leading_uuid_gets_a_prefix() -> None:
    name = service_name(RUN_ID)
    assert name == f"fl-{RUN_ID}"
    assert DNS_1035.match(name)
    assert len(name) == 39


@given(st.uuids())
def test_every_uuid_makes_a_valid_service_name(run_uuid: uuid.UUID) -> None:
    name = service_name(str(run_uuid))
    assert DNS_1035.match(name)
    assert len(name) <= 63


def test_uppercase_run_id_is_lowercased_in_the_name_but_not_in_the_selector() -> None:
    upper = RUN_ID.upper()
    assert service_name(upper) == f"fl-{RUN_ID}"
    # Label selectors are case-sensitive: the selector must carry the pod label's exact value.
    assert server_selector(upper) == {RUN_ID_LABEL: upper, SERVER_ROLE_LABEL: SERVER_ROLE}


def test_selector_is_run_id_plus_server_role() -> None:
    assert server_selector(RUN_ID) == {
        "pipeline/runid": RUN_ID,
        "fl-kubeflow/role": "server",
    }


@pytest.mark.parametrize(
    "placeholder",
    ["{{$.pipeline_job_uuid}}", "fl-{{$.pipeline_job_uuid}}", "{{$.inputs.parameters['run']}}"],
)
def test_unsubstituted_placeholder_is_rejected_with_its_value(placeholder: str) -> None:
    with pytest.raises(ValueError, match="placeholder") as error:
        service_name(placeholder)
    assert repr(placeholder) in str(error.value)
    with pytest.raises(ValueError, match="placeholder"):
        server_selector(placeholder)


def test_empty_run_id_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        service_name("")


@pytest.mark.parametrize("bad", ["run_1", "run.1", "-abc", "abc-", "a b", "ünïcode", " " + RUN_ID])
def test_characters_a_service_name_cannot_hold_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="cannot name a Kubernetes Service") as error:
        service_name(bad)
    assert repr(bad) in str(error.value)


def test_non_string_run_id_is_rejected() -> None:
    with pytest.raises(ValueError, match="string"):
        service_name(None)  # type: ignore[arg-type]


def test_length_limit_is_63_characters_with_the_prefix() -> None:
    longest = "a" * 60
    assert len(service_name(longest)) == 63
    with pytest.raises(ValueError, match="61 characters") as error:
        service_name("a" * 61)
    assert "a" * 61 in str(error.value)


def test_server_url() -> None:
    assert server_url(RUN_ID, "kubeflow-user-example-com") == (
        f"http://fl-{RUN_ID}.kubeflow-user-example-com.svc:8080"
    )
    assert server_url(RUN_ID, "kubeflow", 9000) == f"http://fl-{RUN_ID}.kubeflow.svc:9000"
    assert server_url(RUN_ID, "ns", cluster_domain="cluster.local.") == (
        f"http://fl-{RUN_ID}.ns.svc.cluster.local:8080"
    )


@pytest.mark.parametrize("namespace", ["", "Kubeflow", "a_b", "x" * 64])
def test_server_url_rejects_bad_namespace(namespace: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        server_url(RUN_ID, namespace)


@pytest.mark.parametrize("port", [0, 65536, -1, True, "8080", 80.0])
def test_server_url_rejects_bad_port(port: object) -> None:
    with pytest.raises(ValueError, match="port"):
        server_url(RUN_ID, "ns", port)  # type: ignore[arg-type]
