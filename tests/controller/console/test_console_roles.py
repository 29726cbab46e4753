"""Every console route, by the role it needs: none is reachable without a session, none that
changes anything without the form's CSRF token, none above the visitor's role. A route added
without an entry here fails the first test."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.routing import Mount, Route

from controller.app import create_app
from controller.settings import Settings

Browser = Callable[[str], tuple[TestClient, str]]

# (method, path) -> (role needed, a concrete path to call). Open routes need no session.
OPEN = {("GET", "/signin"), ("POST", "/signin")}
A_JOB = "/jobs/00000000-0000-4000-8000-000000000000"  # no such job: the session and role come first
PAGES: dict[tuple[str, str], tuple[str, str]] = {
    ("GET", "/"): ("viewer", "/"),
    ("GET", "/fleet"): ("viewer", "/fleet"),
    ("POST", "/signout"): ("viewer", "/signout"),
    ("GET", "/jobs"): ("viewer", "/jobs"),
    ("GET", "/jobs/new"): ("operator", "/jobs/new"),
    ("POST", "/jobs/new"): ("operator", "/jobs/new"),
    ("GET", "/hosts/{name}"): ("viewer", "/hosts/web-1"),
    ("GET", "/hosts-in"): ("viewer", "/hosts-in"),
    ("POST", "/hosts-in/hosts"): ("admin", "/hosts-in/hosts"),
    ("POST", "/hosts-in/bootstrap"): ("admin", "/hosts-in/bootstrap"),
    ("POST", "/hosts-in/uninstall"): ("admin", "/hosts-in/uninstall"),
    ("GET", "/hosts-in/batches/{batch_id}"): ("viewer", "/hosts-in/batches/b-1"),
    ("GET", "/hosts-in/batches/{batch_id}/progress"): ("viewer", "/hosts-in/batches/b-1/progress"),
    ("GET", "/hosts-in/runs/{run_id}"): ("viewer", "/hosts-in/runs/r-1"),
    ("GET", "/hosts-in/runs/{run_id}/progress"): ("viewer", "/hosts-in/runs/r-1/progress"),
    ("GET", "/jobs/compare"): ("viewer", "/jobs/compare"),
    ("GET", "/jobs/{job_id:uuid}"): ("viewer", A_JOB),
    ("GET", "/jobs/{job_id:uuid}/report"): ("viewer", f"{A_JOB}/report"),
    ("GET", "/jobs/{job_id:uuid}/download/{kind}"): ("viewer", f"{A_JOB}/download/csv"),
    ("GET", "/jobs/{job_id:uuid}/events"): ("viewer", f"{A_JOB}/events"),
    ("POST", "/jobs/{job_id:uuid}/cancel"): ("operator", f"{A_JOB}/cancel"),
    ("GET", "/schedules"): ("viewer", "/schedules"),
    ("GET", "/schedules/{ref}"): ("viewer", "/schedules/nightly"),
    ("GET", "/schedules/new"): ("operator", "/schedules/new"),
    ("POST", "/schedules/new"): ("operator", "/schedules/new"),
    ("GET", "/schedules/{ref}/edit"): ("operator", "/schedules/nightly/edit"),
    ("POST", "/schedules/{ref}/edit"): ("operator", "/schedules/nightly/edit"),
    ("GET", "/schedules/{ref}/trend"): ("viewer", "/schedules/nightly/trend?metric=p99:lat"),
    ("POST", "/schedules/{ref}/pause"): ("operator", "/schedules/nightly/pause"),
    ("POST", "/schedules/{ref}/resume"): ("operator", "/schedules/nightly/resume"),
    ("POST", "/schedules/{ref}/run"): ("operator", "/schedules/nightly/run"),
    ("POST", "/schedules/{ref}/delete"): ("operator", "/schedules/nightly/delete"),
}
RANK = {"viewer": 0, "operator": 1, "admin": 2}


def console_routes() -> set[tuple[str, str]]:
    app = create_app(Settings(database_url="sqlite:///:memory:"))
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before included routers were kept as branches
        routes: list[Any] = list(app.routes)
    else:
        routes = [ctx.original_route for ctx in iter_route_contexts(app.routes)]
    found = set()
    for route in routes:
        if isinstance(route, Mount) or not isinstance(route, Route):
            continue
        if route.path.startswith(("/v1", "/healthz", "/metrics", "/docs", "/redoc", "/openapi")):
            continue
        found |= {(m, route.path) for m in route.methods or () if m != "HEAD"}
    return found


def test_every_console_route_is_listed() -> None:
    assert console_routes() == set(PAGES) | OPEN


@pytest.mark.parametrize("route", sorted(PAGES))
def test_no_session_no_page(app: FastAPI, route: tuple[str, str]) -> None:
    method, _ = route
    with TestClient(app) as client:
        got = client.request(method, PAGES[route][1], follow_redirects=False)
    assert got.status_code == 303 and got.headers["location"].startswith("/signin")


@pytest.mark.parametrize("route", sorted(r for r in PAGES if r[0] == "POST"))
def test_no_csrf_no_change(browser: Browser, route: tuple[str, str]) -> None:
    client, _ = browser("admin")
    for form in ({}, {"csrf": "forged"}):
        got = client.post(PAGES[route][1], data=form, follow_redirects=False)
        assert got.status_code == 403, (route, got.text[:200])
        assert "CSRF" in got.text


@pytest.mark.parametrize("route", sorted(r for r in PAGES if r[0] == "POST"))
def test_below_the_role_no_change(browser: Browser, route: tuple[str, str]) -> None:
    needed = PAGES[route][0]
    for role in RANK:
        if RANK[role] >= RANK[needed]:
            continue
        client, csrf = browser(role)
        got = client.post(PAGES[route][1], data={"csrf": csrf}, follow_redirects=False)
        assert got.status_code == 403, (route, role)
