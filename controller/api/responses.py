"""The error answers routes declare in the OpenAPI document, written once.

Every error body is `{"detail": ...}`: a sentence, or FastAPI's list of `{loc, msg, type}`
whose `loc` names the field.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticSerializationError


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    loc: list[str | int]
    msg: str
    type: str


class ErrorPublic(BaseModel):
    detail: str | list[ErrorDetail]


_WHY = {
    400: "a body that cannot be read (not UTF-8 JSON)",
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
AUTHENTICATED = errors(400, 401, 403, 422)
# A DELETE: 204 when done, 404 when there was nothing to delete.
DELETED: dict[str, Any] = {"status_code": 204, "responses": errors(404)}


# Legal raw in a JSON string, but a terminal or log viewer acts on them: sent as \\u escapes.
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def json_safe(text: str) -> str:
    """Serialized JSON with DEL, C1, bidi controls and lone surrogates written as \\u escapes
    (C0 is escaped by every JSON encoder already); the document's meaning is unchanged."""
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class SafeJSONResponse(JSONResponse):
    """The API's JSON: names a traced host sent never reach a client's terminal raw."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return json_safe(text).encode("utf-8")


class ModelResponse(Response):
    """A large pydantic document (a job's 1,000 runs, a fleet's results) serialized once, by
    pydantic: returned as a model, FastAPI would dump it, validate it again and encode it with
    json (3 passes, ~1 s for 1,000 hosts). Made safe as SafeJSONResponse does."""

    media_type = "application/json"

    def __init__(self, model: BaseModel, status_code: int = 200) -> None:
        try:
            text = model.model_dump_json()
        except PydanticSerializationError:  # e.g. a lone surrogate: the slow path escapes it
            text = json.dumps(jsonable_encoder(model), ensure_ascii=False, allow_nan=False)
        super().__init__(json_safe(text).encode("utf-8"), status_code=status_code)
