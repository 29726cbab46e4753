"""The console in the application: its routers, static files and error pages."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.console import (
    fleet,
    hosts,
    job_page,
    jobs_list,
    pages,
    schedule_edit,
    schedules,
)
from controller.console.web import PageError, SignInNeeded, page, redirect, sign_in_url
from controller.errors import ControllerError

STATIC = Path(__file__).parent / "static"
_ROUTING = {404: "no such page", 405: "this page does not take that method"}
# jobs_list before job_page: /jobs/new is not a job id; schedule_edit before schedules for
# the same reason (/schedules/new).
ROUTERS = (
    pages.router,
    fleet.router,
    jobs_list.router,
    job_page.router,
    hosts.router,
    schedule_edit.router,
    schedules.router,
)


def is_console(request: Request) -> bool:
    """Pages, not the API: errors there are pages too."""
    path = request.url.path
    return not (path.startswith("/v1/") or path in ("/v1", "/healthz", "/metrics"))


def error_page(request: Request, status: int, message: str) -> Response:
    return page(request, "error.html", None, status=status, message=message)


def mount(app: FastAPI) -> None:
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(SignInNeeded)
    async def _sign_in(request: Request, exc: SignInNeeded) -> Response:
        return redirect(sign_in_url(exc.back))

    @app.exception_handler(PageError)
    async def _page_error(request: Request, exc: PageError) -> Response:
        return error_page(request, exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Routing's own 404/405: a page on the console's paths, FastAPI's JSON on the API's.
        if is_console(request) and not request.url.path.startswith("/static/"):
            return error_page(request, exc.status_code, _ROUTING.get(exc.status_code, exc.detail))
        return await http_exception_handler(request, exc)


def console_error(request: Request, exc: Exception) -> Response | None:
    """The page for an error the API would answer as JSON; None on API paths."""
    if not is_console(request):
        return None
    if isinstance(exc, ControllerError):
        return error_page(request, exc.status, exc.message)
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_page(request, 422, f"{where}: {first.get('msg', 'invalid')}")
    return None
