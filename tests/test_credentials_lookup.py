"""Registry.identify looks tokens up by digest: the same answers as comparing each."""

from __future__ import annotations

from fl_kubeflow.credentials import ClientCredential, Registry, issue_many


def test_every_token_of_many_finds_its_own_enrolment_and_a_stranger_none() -> None:
    registry, credentials = issue_many([f"c{i}" for i in range(300)])
    for credential in credentials:
        found = registry.identify(credential.token)
        assert found is not None and found.name == credential.client_id
    assert registry.identify("not-a-token") is None
    # A registry made from this one (an enrolment more) has its own index.
    extra = ClientCredential("late", "late-token")
    grown = registry.enrol(extra)
    assert grown.identify("late-token").name == "late"  # type: ignore[union-attr]
    assert registry.identify("late-token") is None


def test_a_token_enrolled_under_two_names_is_the_first_name_as_before() -> None:
    registry = (
        Registry().enrol(ClientCredential("a", "shared")).enrol(ClientCredential("b", "shared"))
    )
    assert registry.identify("shared").name == "a"  # type: ignore[union-attr]
