"""The checks a request passes on its head alone, before any byte of its body is read.

Both WSGI servers call ``check_request_head`` once a request's line and headers have
arrived (waitress from its parser, cheroot before it reads the body). A refusal is
answered at once with its JSON body and the connection is closed unread, so a
stranger's 15 MiB upload costs the server one header block, not 15 MiB of spool.

The order is the protocol's: 401 (no, unknown or revoked token), 403 (the token's
principal is not the client it claims, or that client has not joined), 409 (an
update or a masked input for a round, or a stage, that is not open), 413 (a
``Content-Length`` over the path's limit). What needs the body (the JSON
``client_id`` of join, evaluate, leave and the secure stages, the model itself) is
checked by the app afterwards, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fl_kubeflow import protocol
from fl_kubeflow.server.app import MAX_JSON_BYTES
from fl_kubeflow.server.errors import RequestError, TooLarge
from fl_kubeflow.server.federation import Federation
from fl_kubeflow.server.identity import Identities
from fl_kubeflow.server.updates import check_update_size

# Paths whose body is a model (safetensors), up to --max-update-mb.
MODEL_BODY_PATHS = (protocol.UPDATE_PATH, protocol.INITIAL_PATH, protocol.SECAGG_MASKED_PATH)
# Those of them that are a round's contribution, whose X-FL-Round is checked too.
ROUND_BODY_PATHS = (protocol.UPDATE_PATH, protocol.SECAGG_MASKED_PATH)
# What the header names are called here: lower case, as in HTTP/2.
AUTHORIZATION = "authorization"
CONTENT_LENGTH = "content-length"
CLIENT_ID = protocol.CLIENT_ID_HEADER.lower()
ROUND = protocol.ROUND_HEADER.lower()

# check_request_head with its first two arguments bound, as the WSGI servers call it:
# (method, path, headers by lower-case name) -> the refusal, or None to read the body.
HeadCheck = Callable[[str, str, Mapping[str, str]], RequestError | None]


def check_request_head(
    federation: Federation,
    identities: Identities,
    method: str,
    path: str,
    headers: Mapping[str, str],
) -> RequestError | None:
    """The refusal a request has earned by its head alone, or None to read its body.

    Never waits: the waitress I/O thread calls it, and every socket of its loop waits
    meanwhile. Counted refusals appear in ``fl_requests_rejected_total``.

    Args:
        federation: The run (client records and the open round).
        identities: The server's principals (server/identity.py): a registry, the
            shared ``--token-file`` token, or none (an open run).
        method: The request method, e.g. ``POST``.
        path: The request path, without the query string.
        headers: The request headers by lower-case name.
    """
    if not path.startswith(protocol.RUN_PREFIX):
        return _size_refusal(federation, path, headers)
    try:
        _authenticate(federation, identities, path, headers)
    except RequestError as exc:
        return exc
    if method == "POST" and path in MODEL_BODY_PATHS:
        try:
            _check_run(federation, path, headers)
        except RequestError as exc:
            return exc
    return _size_refusal(federation, path, headers)


def _check_run(federation: Federation, path: str, headers: Mapping[str, str]) -> None:
    """403 for a client that has not joined, 409 for an update to a round not open."""
    client_id = headers.get(CLIENT_ID)
    if not client_id:
        return  # the app answers 400 for the missing header, as ever
    server_round = None
    if path in ROUND_BODY_PATHS:
        try:
            server_round = int(headers.get(ROUND, "").strip())
        except ValueError:
            return  # malformed: the app's 400
    federation.check_before_body(
        client_id, server_round, masked=path == protocol.SECAGG_MASKED_PATH
    )


def trusted(path: str, refusal: RequestError | None) -> bool:
    """Whether a connection whose request head got this verdict has shown it is a client's.

    Only a /v1 request that passed the check proves that (a token, or an open run's
    client); probes and refused requests leave their connection a stranger's.
    """
    return refusal is None and path.startswith(protocol.RUN_PREFIX)


def _authenticate(
    federation: Federation,
    identities: Identities,
    path: str,
    headers: Mapping[str, str],
) -> None:
    try:
        identities.authenticate(headers.get(AUTHORIZATION), headers.get(CLIENT_ID), path)
    except RequestError as exc:
        federation.count_rejection(exc.code)
        raise


def _size_refusal(
    federation: Federation, path: str, headers: Mapping[str, str]
) -> RequestError | None:
    """413 for a declared body over the path's limit (chunked bodies are counted as read)."""
    raw = headers.get(CONTENT_LENGTH, "").strip()
    if not raw.isdigit():
        return None  # none, or malformed: the server's parser answers that
    size = int(raw)
    try:
        if path in MODEL_BODY_PATHS:
            check_update_size(size, federation.config.max_update_bytes)
        elif size > MAX_JSON_BYTES:
            raise TooLarge(f"JSON body exceeds {MAX_JSON_BYTES} bytes")
    except TooLarge as exc:
        federation.count_rejection(protocol.TOO_LARGE)
        return exc
    return None
