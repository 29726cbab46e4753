"""What every console page shares: the signed-in visitor, CSRF-checked forms, rendering.

Pages are rendered on the server (Jinja2, autoescaped: a traced host names its own processes,
files and labels) with a little JavaScript for what is live. A page is a URL: sharing it or
going back works, and a viewer never receives a control the server would refuse.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.datastructures import FormData

from controller.api.deps import SessionDep, SettingsDep
from controller.audit.middleware import note_caller
from controller.auth.models import Role
from controller.console import format as fmt
from controller.console.sessions import COOKIE, Visitor, visitor

log = logging.getLogger(__name__)

# 'unsafe-inline' styles: reports and charts are SVG with style attributes; no inline script.
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; frame-ancestors 'self'; form-action 'self'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

templates = Environment(
    loader=PackageLoader("controller.console", "templates"),
    autoescape=select_autoescape(default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters.update(fmt.FILTERS)


class SignInNeeded(Exception):
    """No session, or it ended: the page sends the browser to sign in, then back here."""

    def __init__(self, back: str) -> None:
        super().__init__(back)
        self.back = back


class PageError(Exception):
    """An error shown as a page (403, 404, ...), with the message the API would give."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def here(request: Request) -> str:
    """This page's path and query: where to come back after signing in."""
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def safe_back(back: str | None) -> str:
    """Only a path on this site: `next=//evil.example` must not leave it."""
    if not back or not back.startswith("/") or back.startswith("//") or "\\" in back:
        return "/"
    parts = urlsplit(back)
    return back if not parts.scheme and not parts.netloc else "/"


def current_visitor(request: Request, session: SessionDep, settings: SettingsDep) -> Visitor:
    found = visitor(
        session=session,
        raw=request.cookies.get(COOKIE, ""),
        idle=timedelta(minutes=settings.console_idle_minutes),
    )
    if found is None:
        raise SignInNeeded(here(request))
    note_caller(request.scope, actor=found.name, role=found.role.value)
    return found


VisitorDep = Annotated[Visitor, Depends(current_visitor)]


def requiring(role: Role) -> Any:
    def check(who: VisitorDep) -> Visitor:
        if not who.may(role):
            raise PageError(403, f"this needs the {role.value} role")
        return who

    return Depends(check)


OperatorDep = Annotated[Visitor, requiring(Role.operator)]
AdminDep = Annotated[Visitor, requiring(Role.admin)]


def check_csrf(form: FormData, expected: str) -> None:
    got = form.get("csrf")
    if not isinstance(got, str) or not hmac.compare_digest(got.encode(), expected.encode()):
        raise PageError(403, "the form's CSRF token is missing or wrong: reload the page")


async def posted(request: Request, who: VisitorDep) -> FormData:
    """The POSTed form, once its CSRF token matched the session's."""
    form = await request.form(max_files=0, max_fields=200, max_part_size=256 * 1024)
    check_csrf(form, who.csrf)
    return form


FormDep = Annotated[FormData, Depends(posted)]


def page(
    request: Request,
    name: str,
    who: Visitor | None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    body = templates.get_template(name).render(
        request=request, who=who, path=request.url.path, Role=Role, status=status, **context
    )
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def redirect(to: str, headers: Mapping[str, str] | None = None) -> Response:
    """After a POST: 303, so that reloading the next page does not post again."""
    return RedirectResponse(to, status_code=303, headers=dict(headers or {}))


def sign_in_url(back: str) -> str:
    return "/signin" + (f"?next={quote(back, safe='/')}" if back and back != "/" else "")
