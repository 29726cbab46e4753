"""One audit record per mutating API call, written by one ASGI middleware for every route.

The record is written before the answer's last byte leaves, so a client that saw the answer
finds the record. Refused calls (401, 403, 422, ...) are recorded like the others.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.audit import service
from controller.audit.rules import DEFAULT_RULE, MUTATING, RULES, objects_of
from controller.audit.summary import refusal_reason, summarize

log = logging.getLogger(__name__)
SCOPE_KEY = "fleettrace.audit"
# Bodies past these sizes are counted, not kept or parsed (memory per call stays bounded).
MAX_REQUEST_BYTES = 1 << 20
MAX_ANSWER_BYTES = 4 << 20


@dataclass
class Caller:
    """Who made the call, as the token check found out (nothing when it found no token)."""

    actor: str | None = None
    role: str | None = None


def note_caller(scope: Scope, *, actor: str, role: str) -> None:
    """Called by the token check: the record names the token, never its secret."""
    caller = scope.get(SCOPE_KEY)
    if isinstance(caller, Caller):
        caller.actor, caller.role = actor, role


class _Exchange:
    """What one call sent and got, kept while the app handles it."""

    def __init__(self) -> None:
        self.request = bytearray()
        self.request_size = 0
        self.answer = bytearray()
        self.answer_size = 0
        self.status: int | None = None
        self.answer_type = ""
        self.written = False


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING:
            await self.app(scope, receive, send)
            return
        caller = Caller()
        scope[SCOPE_KEY] = caller
        seen = _Exchange()

        async def tee_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                seen.request_size += len(chunk)
                if seen.request_size <= MAX_REQUEST_BYTES:
                    seen.request.extend(chunk)
            return message

        async def tee_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen.status = message["status"]
                headers = dict(message.get("headers", []))
                seen.answer_type = headers.get(b"content-type", b"").decode("latin-1")
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                seen.answer_size += len(chunk)
                if seen.answer_size <= MAX_ANSWER_BYTES:
                    seen.answer.extend(chunk)
                if not message.get("more_body", False) and not seen.written:
                    seen.written = True
                    await self._write(scope, caller, seen)
            await send(message)

        try:
            await self.app(scope, tee_receive, tee_send)
        except Exception:
            if not seen.written:
                seen.written = True
                seen.status = 500
                await self._write(scope, caller, seen)
            raise

    async def _write(self, scope: Scope, caller: Caller, seen: _Exchange) -> None:
        route = scope.get("route")
        action: str | None = getattr(route, "operation_id", None)
        if action is None and not scope["path"].startswith("/v1/"):
            action = f"console_{getattr(route, 'name', '')}"  # the web console's forms
        if route is None or action is None or scope["method"] not in getattr(route, "methods", ()):
            return  # no route matched (404/405 from routing): not a call of the API
        sessions: sessionmaker[Session] = scope["app"].state.sessions
        if _is_form(scope):
            request = _form(seen.request, seen.request_size, MAX_REQUEST_BYTES)
        else:
            request = _json(seen.request, seen.request_size, MAX_REQUEST_BYTES)
        answer = None
        if "json" in seen.answer_type:
            answer = _json(seen.answer, seen.answer_size, MAX_ANSWER_BYTES)
        refused = seen.status is None or seen.status >= 400
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        summary = summarize(request, query)
        if refused and (reason := refusal_reason(answer)):
            summary["error"] = reason
        client = scope.get("client")
        entry: dict[str, Any] = {
            "actor": caller.actor,
            "role": caller.role,
            "action": action,
            "method": scope["method"],
            "path": scope["path"],
            "objects": objects_of(
                RULES.get(action, DEFAULT_RULE),
                scope.get("path_params", {}),
                request,
                None if refused else answer,
            ),
            "summary": summary,
            "client": client[0] if client else None,
            "status": seen.status or 500,
        }
        await run_in_threadpool(_store, sessions, entry)


def _store(sessions: sessionmaker[Session], entry: dict[str, Any]) -> None:
    try:
        with sessions() as session:
            service.record_call(session=session, **entry)
            session.commit()
    except Exception:
        # The call has happened: its answer goes out; the missing record is loud in the log.
        log.exception(
            "audit: could not record %s %s by %s (status %s)",
            entry["method"],
            entry["path"],
            entry["actor"],
            entry["status"],
        )


def _is_form(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return bool(value.split(b";")[0].strip() == b"application/x-www-form-urlencoded")
    return False


def _form(raw: bytearray, size: int, limit: int) -> Any:
    """A console form's fields; its CSRF token is not kept (secrets are masked by name)."""
    if size == 0:
        return None
    if size > limit:
        return f"[{size} bytes, not kept]"
    fields = parse_qs(bytes(raw).decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] if len(v) == 1 else v for k, v in fields.items() if k != "csrf"}


def _json(raw: bytearray, size: int, limit: int) -> Any:
    if size == 0:
        return None
    if size > limit:
        return f"[{size} bytes, not kept]"
    try:
        return json.loads(raw)
    except ValueError:
        return f"[{size} bytes, not JSON]"
