"""Sign-in, sign-out, and the console's home."""

from __future__ import annotations

import hmac
import secrets
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from controller.api.deps import SessionDep, SettingsDep
from controller.audit.middleware import note_caller
from controller.console import sessions
from controller.console.web import FormDep, VisitorDep, page, redirect, safe_back

router = APIRouter(include_in_schema=False)

# Before a session exists, the sign-in form's CSRF token is a double-submit cookie.
SIGNIN_COOKIE = "ft_signin"


def _cookie_args(request: Request) -> dict[str, object]:
    return {
        "httponly": True,
        "samesite": "strict",
        "secure": request.url.scheme == "https",
        "path": "/",
    }


@router.get("/")
def home(who: VisitorDep) -> Response:
    return redirect("/fleet")


@router.get("/signin")
def signin_form(request: Request, next: str = "/") -> Response:
    csrf = secrets.token_urlsafe(32)
    response = page(request, "signin.html", None, csrf=csrf, back=safe_back(next), error=None)
    response.set_cookie(SIGNIN_COOKIE, csrf, max_age=3600, **_cookie_args(request))  # type: ignore[arg-type]
    return response


@router.post("/signin")
def signin(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    token: Annotated[str, Form(max_length=256)] = "",
    csrf: Annotated[str, Form(max_length=128)] = "",
    back: Annotated[str, Form(alias="next", max_length=2048)] = "/",
) -> Response:
    expected = request.cookies.get(SIGNIN_COOKIE, "")
    if not expected or not hmac.compare_digest(csrf.encode(), expected.encode()):
        return page(
            request,
            "signin.html",
            None,
            status=403,
            csrf=expected,
            back=safe_back(back),
            error="The form expired or came from another site: sign in again.",
        )
    idle = timedelta(minutes=settings.console_idle_minutes)
    made = sessions.sign_in(session=session, raw_token=token, idle=idle)
    if made is None:
        return page(
            request,
            "signin.html",
            None,
            status=401,
            csrf=expected,
            back=safe_back(back),
            error="Unknown or revoked API token.",
        )
    raw, who = made
    note_caller(request.scope, actor=who.name, role=who.role.value)
    response = redirect(safe_back(back))
    response.set_cookie(sessions.COOKIE, raw, **_cookie_args(request))  # type: ignore[arg-type]
    response.delete_cookie(SIGNIN_COOKIE, path="/")
    return response


@router.post("/signout")
def signout(request: Request, _: FormDep, session: SessionDep) -> Response:
    sessions.sign_out(session=session, raw=request.cookies.get(sessions.COOKIE, ""))
    response = redirect("/signin")
    response.delete_cookie(sessions.COOKIE, path="/")
    return response
