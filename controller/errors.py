"""The controller's exceptions, mapped to HTTP answers at the API boundary."""

from __future__ import annotations


class ControllerError(Exception):
    status = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidRequest(ControllerError):
    """A request that is well-formed but not acceptable; `field` names the culprit."""

    status = 422


class NotFound(ControllerError):
    status = 404


class Conflict(ControllerError):
    status = 409


class Forbidden(ControllerError):
    status = 403


class Unavailable(ControllerError):
    """A dependency (Redis, the database) is away: try again."""

    status = 503
