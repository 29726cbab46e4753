"""The error answers routes declare in the OpenAPI document, written once.

Every error body is `{"detail": ...}`: a sentence, or FastAPI's list of `{loc, msg, type}`
whose `loc` names the field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    loc: list[str | int]
    msg: str
    type: str


class ErrorPublic(BaseModel):
    detail: str | list[ErrorDetail]


_WHY = {
    401: "no API token, or an unknown or revoked one",
    403: "the token's role does not allow this",
    404: "no such resource",
    409: "conflicts with the current state",
    422: "a field is invalid: the detail names it",
    503: "a service the controller needs is unreachable",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for these error statuses."""
    return {code: {"model": ErrorPublic, "description": _WHY[code]} for code in codes}


# What any route behind a token can answer: no token, the wrong role, a malformed request.
AUTHENTICATED = errors(401, 403, 422)
