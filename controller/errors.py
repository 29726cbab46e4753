"""The controller's exceptions, mapped to HTTP answers once, at the API boundary (app.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class ControllerError(Exception):
    """`loc` names the culprit where FastAPI's own errors would: ("query", "metric"),
    ("body", "scope", "cgroup"); `field="scope.cgroup"` is short for a body field."""

    status = 400
    headers: Mapping[str, str] | None = None

    def __init__(
        self, message: str, *, field: str | None = None, loc: Sequence[str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field if field is not None else (loc[-1] if loc else None)
        self.loc = tuple(loc) if loc else (("body", *field.split(".")) if field else None)

    @property
    def detail(self) -> Any:
        """The answer's `detail`: a sentence, or a located error in FastAPI's own shape."""
        if self.loc is None:
            return self.message
        return [{"loc": list(self.loc), "msg": self.message, "type": "value_error"}]


class InvalidRequest(ControllerError):
    """A request that is well-formed but not acceptable; `loc` names the culprit."""

    status = 422


class Unauthenticated(ControllerError):
    status = 401
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(ControllerError):
    status = 403


class NotFound(ControllerError):
    status = 404


class Conflict(ControllerError):
    status = 409


class TooManyRequests(ControllerError):
    status = 429


class Unavailable(ControllerError):
    """A dependency (Redis, the database) is away: try again."""

    status = 503
