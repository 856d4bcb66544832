"""The loopback S3 fixture itself: objects round-trip, and only its credentials are let in."""

from __future__ import annotations

import pytest

from tests.s3_server import _filesystem, s3_server  # noqa: F401  (pytest fixture)


def test_objects_round_trip_with_the_fixture_credentials(s3_server):  # noqa: F811
    url = s3_server.put("probe/hello.txt", b"hello")
    assert url == f"s3://{s3_server.bucket}/probe/hello.txt"
    assert s3_server.filesystem().cat(url) == b"hello"


def test_wrong_credentials_are_refused(s3_server):  # noqa: F811
    s3_server.put("probe/private.txt", b"private")
    intruder = _filesystem(s3_server.endpoint, s3_server.access_key, "not-the-secret")
    with pytest.raises(PermissionError):
        intruder.cat(s3_server.url("probe/private.txt"))
