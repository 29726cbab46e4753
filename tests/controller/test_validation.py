"""Bad requests get a 4xx whose detail names the field, and a refused job leaves no trace."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from controller.jobs.models import Job, JobEvent, Run
from node_agent.wire import host_queue
from tests.controller.conftest import RecordingDispatcher, Tokens
from tests.controller.support import field_paths, register_host

HOST = "valid-host"
MAX_DURATION = 600  # the test settings' max_duration_s
CPU = "cpu_profile"  # frequency in [1, 1000]
TCP = "tcp_retransmits"  # takes no scope


@pytest.fixture(scope="module")
def host(client: TestClient, tokens: Tokens) -> str:
    register_host(client, tokens.headers("admin"), HOST, role="web")
    return HOST


def job(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"program": "syscalls", "duration_s": 2, "targets": {"hosts": [HOST]}}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


BAD_JOBS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown program", job(program="nosuchprogram"), "program"),
    ("empty program", job(program=""), "program"),
    ("parameter above its max", job(program=CPU, params={"frequency": 5000}), "params.frequency"),
    ("parameter below its min", job(program=CPU, params={"frequency": 0}), "params.frequency"),
    ("parameter of the wrong type", job(params={"per_process": "maybe"}), "params.per_process"),
    ("unknown parameter", job(params={"bogus": 1}), "params.bogus"),
    ("empty host list", job(targets={"hosts": []}), "targets.hosts"),
    ("unknown host", job(targets={"hosts": [HOST, "ghost"]}), "targets.hosts"),
    ("bad host name", job(targets={"hosts": ["bad name!"]}), "targets.hosts.0"),
    ("selector matching no host", job(targets={"selector": {"role": "db"}}), "targets.selector"),
    ("no target kind", job(targets={}), "targets"),
    ("two target kinds", job(targets={"hosts": [HOST], "all": True}), "targets"),
    ("missing targets", job(targets=None), "targets"),
    ("too long a duration", job(duration_s=MAX_DURATION + 1), "duration_s"),
    ("zero duration", job(duration_s=0), "duration_s"),
    ("missing duration", job(duration_s=None), "duration_s"),
    ("pid scope of zero", job(scope={"pid": 0}), "scope.pid"),
    ("process name too long", job(scope={"comm": "x" * 16}), "scope.comm"),
    ("scope the program cannot honour", job(program=TCP, scope={"pid": 1}), "scope.pid"),
    ("interval longer than the duration", job(duration_s=2, interval_s=3), "interval_s"),
    ("interval too short", job(interval_s=0.01), "interval_s"),
    ("extra field", job(colour="red"), "colour"),
    ("extra field in targets", job(targets={"hosts": [HOST], "colour": "red"}), "targets.colour"),
    ("extra field in scope", job(scope={"uid": 0}), "scope.uid"),
    ("source for a catalog program", job(source="int x;"), "source"),
    ("custom program without source", job(program="custom"), "source"),
    ("limit out of bounds", job(limits={"max_rows": 0}), "limits.max_rows"),
    ("overhead budget of zero", job(limits={"overhead_pct": 0}), "limits.overhead_pct"),
    (
        "over the row budget (0.1 s x 600 s x 100,000 rows)",
        job(duration_s=MAX_DURATION, interval_s=0.1, limits={"max_rows": 100_000}),
        "interval_s",
    ),
]


def stored(sessions: sessionmaker[Session], client: redis.Redis) -> tuple[int, ...]:
    with sessions() as session:
        counts = [session.scalar(select(func.count()).select_from(t)) or 0 for t in (Job, Run)]
        counts.append(session.scalar(select(func.count()).select_from(JobEvent)) or 0)
    return (*counts, int(client.llen(host_queue(HOST))))


def test_a_valid_job_is_accepted(client: TestClient, tokens: Tokens, host: str) -> None:
    answer = client.post("/v1/jobs", json=job(), headers=tokens.headers("operator"))
    assert answer.status_code == 201, answer.text


@pytest.mark.parametrize(
    ("body", "field"),
    [case[1:] for case in BAD_JOBS],
    ids=[case[0] for case in BAD_JOBS],
)
def test_a_bad_job_is_refused_naming_the_field_and_nothing_is_stored(
    client: TestClient,
    tokens: Tokens,
    host: str,
    sessions: sessionmaker[Session],
    dispatcher: RecordingDispatcher,
    redis_client: redis.Redis,
    body: dict[str, Any],
    field: str,
) -> None:
    before = stored(sessions, redis_client)
    sent = len(dispatcher.sent)
    answer = client.post("/v1/jobs", json=body, headers=tokens.headers("admin"))
    assert answer.status_code == 422, answer.text
    assert field in field_paths(answer), answer.text
    assert stored(sessions, redis_client) == before
    assert len(dispatcher.sent) == sent


def test_a_body_that_is_not_json_is_a_422(client: TestClient, tokens: Tokens) -> None:
    answer = client.post(
        "/v1/jobs",
        content=b"{not json",
        headers={**tokens.headers("operator"), "Content-Type": "application/json"},
    )
    assert answer.status_code == 422, answer.text


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "field"),
    [
        ("POST", "/v1/hosts", {"name": "bad name"}, 422, "name"),
        ("POST", "/v1/hosts", {"name": HOST}, 409, "name"),
        ("POST", "/v1/hosts", {"name": "ok", "colour": "red"}, 422, "colour"),
        ("PATCH", f"/v1/hosts/{HOST}", {"labels": {"k": 1}}, 422, "labels.k"),
        ("POST", "/v1/tokens", {"name": "t", "role": "root"}, 422, "role"),
        ("POST", "/v1/tokens", {"name": "", "role": "viewer"}, 422, "name"),
        ("GET", "/v1/jobs?limit=0", None, 422, "query.limit"),
        ("GET", "/v1/jobs?state=bogus", None, 422, "query.state"),
    ],
)
def test_other_bad_requests_name_the_field(
    client: TestClient,
    tokens: Tokens,
    host: str,
    method: str,
    url: str,
    body: dict[str, Any] | None,
    status: int,
    field: str,
) -> None:
    answer = client.request(method, url, json=body, headers=tokens.headers("admin"))
    assert answer.status_code == status, answer.text
    assert field in field_paths(answer), answer.text


def test_a_bad_selector_and_unknown_objects(client: TestClient, tokens: Tokens) -> None:
    admin = tokens.headers("admin")
    answer = client.get("/v1/hosts?selector=novalue", headers=admin)
    assert answer.status_code == 422, answer.text
    assert field_paths(answer) == ["query.selector"], answer.text
    for method, url in [
        ("GET", "/v1/hosts/nosuchhost"),
        ("DELETE", "/v1/hosts/nosuchhost"),
        ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000"),
        ("POST", "/v1/jobs/00000000-0000-0000-0000-000000000000/cancel"),
        ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000/results"),
        ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000/events"),
        ("DELETE", "/v1/tokens/999999"),
    ]:
        assert client.request(method, url, headers=admin).status_code == 404, (method, url)
