"""Request errors: each maps to one HTTP status and a JSON body naming the problem."""

from __future__ import annotations

from typing import Any


class RequestError(Exception):
    """A request the server refuses; nothing in the run changes."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.details}


class BadRequest(RequestError):
    status, code = 400, "bad_request"


class Unauthorized(RequestError):
    status, code = 401, "unauthorized"


class UnknownClient(RequestError):
    status, code = 403, "unknown_client"


class WrongRound(RequestError):
    status, code = 409, "wrong_round"


class Conflict(RequestError):
    status, code = 409, "conflict"


class RunFailed(RequestError):
    status, code = 409, "run_failed"


class TooLarge(RequestError):
    status, code = 413, "too_large"


class InvalidUpdate(RequestError):
    status, code = 422, "invalid_update"
