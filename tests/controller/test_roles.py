"""The role matrix, endpoint by endpoint: no token, bad token, revoked token, each role.

Routes come from the app itself: a new route without a rule here fails the suite.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.routing import Mount, Route

from controller.app import create_app
from controller.auth.models import ApiToken
from controller.hosts.models import Host
from controller.jobs.models import Job
from controller.settings import Settings
from tests.controller.conftest import Tokens
from tests.controller.support import field_paths, register_host, submit

RANK = {"viewer": 0, "operator": 1, "admin": 2}
CALLERS = ("none", "bad", "revoked", "viewer", "operator", "admin")


@dataclass
class Call:
    method: str
    url: str
    json: dict[str, Any] | None = None


@dataclass
class Ctx:
    client: TestClient
    tokens: Tokens
    host: str

    @property
    def admin(self) -> dict[str, str]:
        return self.tokens.headers("admin")

    def new_host(self) -> str:
        name = f"role-{uuid.uuid4().hex[:8]}"
        register_host(self.client, self.admin, name, team="a")
        return name

    def new_job(self) -> str:
        job = submit(self.client, self.admin, targets={"hosts": [self.host]}, duration_s=2)
        return str(job["id"])

    def finished_job(self) -> str:
        job_id = self.new_job()
        answer = self.client.post(f"/v1/jobs/{job_id}/cancel", headers=self.admin)
        assert answer.json()["state"] == "cancelled", answer.text
        return job_id

    def new_token(self) -> int:
        answer = self.client.post(
            "/v1/tokens", json={"name": "victim", "role": "viewer"}, headers=self.admin
        )
        assert answer.status_code == 201, answer.text
        return int(answer.json()["id"])

    def job_body(self) -> dict[str, Any]:
        return {"program": "syscalls", "duration_s": 2, "targets": {"hosts": [self.host]}}


def _ssh_host(c: Ctx) -> str:
    """A host with an address (a documentation one: the queued bootstrap never runs here)."""
    name = f"ssh-{uuid.uuid4().hex[:8]}"
    body = {"name": name, "address": "192.0.2.1"}
    assert c.client.post("/v1/hosts", json=body, headers=c.admin).status_code == 201
    return name


def _bootstrapped_host(c: Ctx) -> str:
    name = _ssh_host(c)
    assert c.client.post(f"/v1/hosts/{name}/bootstrap", headers=c.admin).status_code == 202
    return name


def _schedule_body(c: Ctx) -> dict[str, Any]:
    template = {"program": "syscalls", "duration_s": 2, "targets": {"hosts": [c.host]}}
    return {"name": f"sched-{uuid.uuid4().hex[:8]}", "interval_s": 3600, "template": template}


def _schedule(c: Ctx) -> str:
    answer = c.client.post("/v1/schedules", json=_schedule_body(c), headers=c.admin)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def _fired_schedule(c: Ctx) -> str:
    """A schedule with two finished runs (fired, then cancelled), so compare has a default."""
    schedule_id = _schedule(c)
    for _ in range(2):
        answer = c.client.post(f"/v1/schedules/{schedule_id}/run", headers=c.admin)
        job_id = answer.json()["recent"][0]["job_id"]
        assert c.client.post(f"/v1/jobs/{job_id}/cancel", headers=c.admin).status_code == 200
    return schedule_id


Builder = Callable[[Ctx], Call]
PUBLIC = None

# (method, path) -> (the least role that may call it, or PUBLIC; how to make a valid call)
RULES: dict[tuple[str, str], tuple[str | None, Builder]] = {
    ("GET", "/healthz"): (PUBLIC, lambda c: Call("GET", "/healthz")),
    # The API's own description holds no data; browsers fetch it without a token.
    ("GET", "/openapi.json"): (PUBLIC, lambda c: Call("GET", "/openapi.json")),
    ("GET", "/docs"): (PUBLIC, lambda c: Call("GET", "/docs")),
    ("GET", "/docs/oauth2-redirect"): (PUBLIC, lambda c: Call("GET", "/docs/oauth2-redirect")),
    ("GET", "/redoc"): (PUBLIC, lambda c: Call("GET", "/redoc")),
    ("GET", "/v1/programs"): ("viewer", lambda c: Call("GET", "/v1/programs")),
    ("GET", "/metrics"): ("viewer", lambda c: Call("GET", "/metrics")),
    ("GET", "/v1/hosts"): ("viewer", lambda c: Call("GET", "/v1/hosts?selector=team=a")),
    ("GET", "/v1/hosts/{name}"): ("viewer", lambda c: Call("GET", f"/v1/hosts/{c.host}")),
    ("POST", "/v1/hosts"): (
        "admin",
        lambda c: Call("POST", "/v1/hosts", {"name": f"new-{uuid.uuid4().hex[:8]}"}),
    ),
    ("PATCH", "/v1/hosts/{name}"): (
        "admin",
        lambda c: Call("PATCH", f"/v1/hosts/{c.new_host()}", {"labels": {"team": "b"}}),
    ),
    ("DELETE", "/v1/hosts/{name}"): (
        "admin",
        lambda c: Call("DELETE", f"/v1/hosts/{c.new_host()}"),
    ),
    # A host's Redis secret: whoever holds it speaks for the host.
    ("POST", "/v1/hosts/{name}/credential"): (
        "admin",
        lambda c: Call("POST", f"/v1/hosts/{c.new_host()}/credential"),
    ),
    ("POST", "/v1/jobs"): ("operator", lambda c: Call("POST", "/v1/jobs", c.job_body())),
    ("GET", "/v1/jobs"): ("viewer", lambda c: Call("GET", "/v1/jobs?state=pending&limit=5")),
    ("GET", "/v1/jobs/{job_id}"): ("viewer", lambda c: Call("GET", f"/v1/jobs/{c.new_job()}")),
    ("POST", "/v1/jobs/{job_id}/cancel"): (
        "operator",
        lambda c: Call("POST", f"/v1/jobs/{c.new_job()}/cancel"),
    ),
    ("GET", "/v1/jobs/{job_id}/results"): (
        "viewer",
        lambda c: Call("GET", f"/v1/jobs/{c.new_job()}/results"),
    ),
    ("GET", "/v1/jobs/{job_id}/events"): (
        "viewer",
        lambda c: Call("GET", f"/v1/jobs/{c.finished_job()}/events"),
    ),
    ("GET", "/v1/jobs/{job_id}/report"): (
        "viewer",
        lambda c: Call("GET", f"/v1/jobs/{c.new_job()}/report?format=md"),
    ),
    ("GET", "/v1/reports/compare"): (
        "viewer",
        lambda c: Call("GET", f"/v1/reports/compare?base={c.new_job()}&other={c.new_job()}"),
    ),
    ("POST", "/v1/hosts/{name}/bootstrap"): (
        "admin",
        lambda c: Call("POST", f"/v1/hosts/{_ssh_host(c)}/bootstrap", {}),
    ),
    ("GET", "/v1/hosts/{name}/bootstrap"): (
        "viewer",
        lambda c: Call("GET", f"/v1/hosts/{_bootstrapped_host(c)}/bootstrap"),
    ),
    ("POST", "/v1/hosts/bootstrap"): (
        "admin",
        lambda c: Call("POST", "/v1/hosts/bootstrap", {"hosts": [_ssh_host(c)]}),
    ),
    ("POST", "/v1/hosts/{name}/uninstall"): (
        "admin",
        lambda c: Call("POST", f"/v1/hosts/{_ssh_host(c)}/uninstall"),
    ),
    ("POST", "/v1/schedules"): (
        "operator",
        lambda c: Call("POST", "/v1/schedules", _schedule_body(c)),
    ),
    ("GET", "/v1/schedules"): ("viewer", lambda c: Call("GET", "/v1/schedules?limit=5")),
    ("GET", "/v1/schedules/{schedule_id}"): (
        "viewer",
        lambda c: Call("GET", f"/v1/schedules/{_schedule(c)}"),
    ),
    ("PATCH", "/v1/schedules/{schedule_id}"): (
        "operator",
        lambda c: Call("PATCH", f"/v1/schedules/{_schedule(c)}", {"interval_s": 600}),
    ),
    ("DELETE", "/v1/schedules/{schedule_id}"): (
        "operator",
        lambda c: Call("DELETE", f"/v1/schedules/{_schedule(c)}"),
    ),
    ("POST", "/v1/schedules/{schedule_id}/pause"): (
        "operator",
        lambda c: Call("POST", f"/v1/schedules/{_schedule(c)}/pause"),
    ),
    ("POST", "/v1/schedules/{schedule_id}/resume"): (
        "operator",
        lambda c: Call("POST", f"/v1/schedules/{_schedule(c)}/resume"),
    ),
    ("POST", "/v1/schedules/{schedule_id}/run"): (
        "operator",
        lambda c: Call("POST", f"/v1/schedules/{_schedule(c)}/run"),
    ),
    ("GET", "/v1/schedules/{schedule_id}/trend"): (
        "viewer",
        lambda c: Call("GET", f"/v1/schedules/{_schedule(c)}/trend?metric=total:syscalls"),
    ),
    ("GET", "/v1/schedules/{schedule_id}/compare"): (
        "viewer",
        lambda c: Call("GET", f"/v1/schedules/{_fired_schedule(c)}/compare"),
    ),
    ("GET", "/v1/tokens"): ("admin", lambda c: Call("GET", "/v1/tokens")),
    ("GET", "/v1/audit"): (
        "admin",
        lambda c: Call("GET", "/v1/audit?action=create_*&since=2000-01-01T00:00:00Z&limit=5"),
    ),
    ("GET", "/v1/ingest/dead-letters"): (
        "admin",
        lambda c: Call("GET", "/v1/ingest/dead-letters?limit=5"),
    ),
    ("POST", "/v1/tokens"): (
        "admin",
        lambda c: Call("POST", "/v1/tokens", {"name": "made", "role": "operator"}),
    ),
    ("DELETE", "/v1/tokens/{token_id}"): (
        "admin",
        lambda c: Call("DELETE", f"/v1/tokens/{c.new_token()}"),
    ),
}


def app_routes() -> dict[tuple[str, str], int]:
    """Every (method, path) the API serves, with its success status; HEAD aside. The
    console's pages are checked in tests/controller/console/test_console_roles.py."""
    app = create_app(Settings(database_url="sqlite:///:memory:"))
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before included routers were kept as branches
        routes: list[Any] = list(app.routes)
    else:
        routes = [ctx.original_route for ctx in iter_route_contexts(app.routes)]
    found: dict[tuple[str, str], int] = {}
    for route in routes:
        if isinstance(route, Mount) or not route.path.startswith(
            ("/v1", "/healthz", "/metrics", "/docs", "/redoc", "/openapi")
        ):
            continue
        assert isinstance(route, Route), f"unexpected route type {route!r}"
        status = route.status_code or 200 if isinstance(route, APIRoute) else 200
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                found[(method, route.path)] = status
    return found


ROUTES = app_routes()


@pytest.fixture(scope="module")
def ctx(client: TestClient, tokens: Tokens) -> Ctx:
    host = f"role-{uuid.uuid4().hex[:8]}"
    register_host(client, tokens.headers("admin"), host, team="a")
    return Ctx(client, tokens, host)


@pytest.fixture(scope="module")
def caller_headers(tokens: Tokens) -> dict[str, dict[str, str]]:
    headers = {
        "none": {},
        "bad": {"Authorization": "Bearer ft_not-a-real-token"},
        "revoked": {"Authorization": f"Bearer {tokens.make('admin', revoked=True)}"},
    }
    headers.update({role: tokens.headers(role) for role in RANK})
    return headers


def fingerprint(sessions: sessionmaker[Session]) -> tuple[Any, ...]:
    """What a refused call must leave alone: hosts, jobs and their states, tokens."""
    with sessions() as session:
        hosts = [(h.name, h.address, h.labels) for h in session.scalars(select(Host))]
        jobs = [(j.id, j.state, j.cancel_requested) for j in session.scalars(select(Job))]
        tokens = [(t.id, t.revoked_at is None) for t in session.scalars(select(ApiToken))]
    return sorted(hosts), sorted(jobs), sorted(tokens)


def test_every_route_has_a_rule_and_every_rule_a_route() -> None:
    assert sorted(set(ROUTES) - set(RULES)) == [], "routes without a role rule"
    assert sorted(set(RULES) - set(ROUTES)) == [], "rules for routes that no longer exist"


def test_only_healthz_and_the_docs_are_public() -> None:
    api = [(m, p) for m, p in ROUTES if RULES.get((m, p), ("?",))[0] is PUBLIC]
    assert sorted(api) == sorted(
        [("GET", p) for p in ("/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect")]
        + [("GET", "/redoc")]
    )


@pytest.mark.parametrize(("method", "path"), list(ROUTES), ids=[f"{m} {p}" for m, p in ROUTES])
def test_role_matrix(
    method: str,
    path: str,
    ctx: Ctx,
    caller_headers: dict[str, dict[str, str]],
    sessions: sessionmaker[Session],
) -> None:
    assert (method, path) in RULES, f"{method} {path} has no role rule in this test"
    needed, build = RULES[(method, path)]
    success = ROUTES[(method, path)]
    for caller in CALLERS:
        call = build(ctx)
        assert call.method == method
        before = fingerprint(sessions)
        answer = ctx.client.request(
            call.method, call.url, json=call.json, headers=caller_headers[caller]
        )
        where = f"{method} {path} as {caller}: {answer.status_code} {answer.text[:300]}"
        if needed is PUBLIC:
            assert answer.status_code == success, where
            continue
        if caller in ("none", "bad", "revoked"):
            assert answer.status_code == 401, where
            assert answer.headers.get("www-authenticate") == "Bearer", where
        elif RANK[caller] < RANK[needed]:
            assert answer.status_code == 403, where
            assert needed in answer.json()["detail"], where
        else:
            assert answer.status_code == success, where
            continue
        assert fingerprint(sessions) == before, f"refused, yet something changed: {where}"


CUSTOM = {
    "program": "custom",
    "duration_s": 2,
    "source": "BPF_HASH(counts, u32, u64); TRACEPOINT_PROBE(sched, sched_switch) { return 0; }",
    "maps": [{"name": "counts", "kind": "counter"}],
}


def test_custom_program_jobs_need_the_admin_role(
    ctx: Ctx, tokens: Tokens, sessions: sessionmaker[Session]
) -> None:
    body = {**CUSTOM, "targets": {"hosts": [ctx.host]}}
    before = fingerprint(sessions)
    for role in ("viewer", "operator"):
        answer = ctx.client.post("/v1/jobs", json=body, headers=tokens.headers(role))
        assert answer.status_code == 403, (role, answer.text)
    answer = ctx.client.post("/v1/jobs", json=body, headers=tokens.headers("operator"))
    assert field_paths(answer) == ["program"], answer.text
    assert fingerprint(sessions) == before
    answer = ctx.client.post("/v1/jobs", json=body, headers=tokens.headers("admin"))
    assert answer.status_code == 201, answer.text
    assert answer.json()["program"] == "custom"


def test_a_token_revoked_through_the_api_stops_working_at_once(ctx: Ctx, tokens: Tokens) -> None:
    answer = ctx.client.post(
        "/v1/tokens", json={"name": "short-lived", "role": "operator"}, headers=ctx.admin
    )
    token = answer.json()
    headers = {"Authorization": f"Bearer {token['token']}"}
    assert ctx.client.get("/v1/jobs", headers=headers).status_code == 200
    assert ctx.client.delete(f"/v1/tokens/{token['id']}", headers=ctx.admin).status_code == 204
    assert ctx.client.get("/v1/jobs", headers=headers).status_code == 401
    listed = ctx.client.get("/v1/tokens", headers=ctx.admin).json()["data"]
    shown = next(t for t in listed if t["id"] == token["id"])
    assert shown["revoked_at"] is not None
    assert "token" not in shown and "token_hash" not in shown
