"""Request errors: each maps to one HTTP status and a JSON body naming the problem."""

from __future__ import annotations

from typing import Any

from fl_kubeflow import protocol


class RequestError(Exception):
    """A request the server refuses; nothing in the run changes."""

    status = 400
    code = protocol.BAD_REQUEST

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return protocol.error_body(self.code, self.message, **self.details)


class BadRequest(RequestError):
    status, code = 400, protocol.BAD_REQUEST


class Unauthorized(RequestError):
    status, code = 401, protocol.UNAUTHORIZED


class Revoked(Unauthorized):
    status, code = 401, protocol.REVOKED


class Forbidden(RequestError):
    status, code = 403, protocol.FORBIDDEN


class UnknownClient(RequestError):
    status, code = 403, protocol.UNKNOWN_CLIENT


class WrongRound(RequestError):
    status, code = 409, protocol.WRONG_ROUND


class Conflict(RequestError):
    status, code = 409, protocol.CONFLICT


class RunFailed(RequestError):
    status, code = 409, protocol.RUN_FAILED


class TooLarge(RequestError):
    status, code = 413, protocol.TOO_LARGE


class InvalidUpdate(RequestError):
    status, code = 422, protocol.INVALID_UPDATE
