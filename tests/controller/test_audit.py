"""The audit log: one record per mutating call (refused ones too), none per read, no secret in
any record, agents' refusals from the real stream, GET /v1/audit, retention.

Routes come from the app, as in the role matrix: a mutating route without an audit rule fails.
Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from controller.app import create_app
from controller.audit import rules as audit_rules
from controller.audit import service as audit
from controller.audit.models import AuditRecord
from controller.audit.rules import MUTATING, PATH_OBJECTS, pick
from controller.audit.summary import MAX_SUMMARY_CHARS, summarize
from controller.auth import service as auth_service
from controller.auth.models import Role
from controller.db import utcnow
from controller.migrate import upgrade
from controller.schedules.scheduler import Scheduler
from controller.settings import Settings
from node_agent.protocol import Refusal, RefusalReason, StreamEnvelope
from node_agent.wire import events_stream
from tests.controller.conftest import IngestThread, RecordingDispatcher, Tokens
from tests.controller.support import field_paths, register_host, submit, wait_for
from tests.controller.test_roles import RULES as ROLE_RULES
from tests.controller.test_roles import Ctx

PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACDWcWLkVdQzSCretSecretMiddleLineOfTheKeyBodyXYZ0123456789ab\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
SSH_PUB = "AAAAC3NzaC1lZDI1NTE5AAAAIGq0yVnE6tY0yP4rE1p3c5pJ9d8Q5V8zXk2bW7aVqS1L"
PEM_LINES = [line for line in PEM.splitlines() if not line.startswith("-----")]


@pytest.fixture(scope="module")
def database_url(db_url: str) -> str:
    return db_url


def _operations() -> dict[tuple[str, str], str]:
    """(method, path) -> operation id, for every route of the API (the console's forms are
    audited too: tests/controller/console/test_signin.py)."""
    app = create_app(Settings(database_url="sqlite:///:memory:"))
    found: dict[tuple[str, str], str] = {}
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and route.path.startswith(("/v1/", "/healthz")):
            for method in route.methods or ():
                found[(method, route.path)] = route.operation_id or route.name
    return found


OPERATIONS = _operations()
WRITES = sorted(key for key in OPERATIONS if key[0] in MUTATING)
READS = sorted(key for key in OPERATIONS if key[0] == "GET")
# Where a created object's id is in the answer, for routes whose path names no object.
MADE: dict[str, tuple[str, str]] = {
    "create_host": ("host", "name"),
    "bootstrap_hosts": ("batch", "id"),
    "create_job": ("job", "id"),
    "create_schedule": ("schedule", "id"),
    "create_token": ("token_id", "id"),
}


@pytest.fixture(scope="module")
def ctx(client: TestClient, tokens: Tokens) -> Ctx:
    host = f"aud-{uuid.uuid4().hex[:8]}"
    register_host(client, tokens.headers("admin"), host, team="a")
    return Ctx(client, tokens, host)


def _last_id(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.max(AuditRecord.id))) or 0)


def _since(sessions: sessionmaker[Session], after: int) -> list[AuditRecord]:
    with sessions() as session:
        query = select(AuditRecord).where(AuditRecord.id > after).order_by(AuditRecord.id)
        return list(session.scalars(query))


def _path_values(template: str, url: str) -> dict[str, str]:
    pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
    match = re.fullmatch(pattern, url.partition("?")[0])
    assert match, (template, url)
    return match.groupdict()


def test_every_mutating_route_has_an_audit_rule_and_every_rule_a_route() -> None:
    operations = {OPERATIONS[key] for key in WRITES}
    assert sorted(operations - set(audit_rules.RULES)) == [], "mutating routes without a rule"
    assert sorted(set(audit_rules.RULES) - operations) == [], "rules for routes that are gone"
    assert sorted(op for op, _ in MADE.items() if op not in operations) == []


def test_no_route_edits_or_deletes_the_audit_log(ctx: Ctx, sessions: sessionmaker[Session]) -> None:
    audit_routes = sorted(key for key in OPERATIONS if key[1].startswith("/v1/audit"))
    assert audit_routes == [("GET", "/v1/audit")]
    # Nor does the database let anything edit a record.
    ctx.new_host()
    last = _last_id(sessions)
    with sessions() as session, pytest.raises(DBAPIError, match="append-only"):
        session.execute(update(AuditRecord).where(AuditRecord.id == last).values(actor="x"))
        session.commit()
    (record,) = _since(sessions, last - 1)
    assert record.actor == "test-admin"


@pytest.mark.parametrize(("method", "path"), WRITES, ids=[f"{m} {p}" for m, p in WRITES])
def test_every_mutating_call_writes_exactly_one_record(
    method: str,
    path: str,
    ctx: Ctx,
    tokens: Tokens,
    sessions: sessionmaker[Session],
) -> None:
    action = OPERATIONS[(method, path)]
    _, build = ROLE_RULES[(method, path)]
    # As the admin: the call succeeds.
    call = build(ctx)
    before = _last_id(sessions)
    answer = ctx.client.request(call.method, call.url, json=call.json, headers=ctx.admin)
    assert answer.status_code < 300, answer.text
    (record,) = _since(sessions, before)
    assert (record.source, record.actor, record.role) == ("api", "test-admin", "admin")
    assert (record.action, record.method, record.status) == (action, method, answer.status_code)
    assert record.path == call.url.partition("?")[0]
    assert record.client == "testclient"
    assert record.at > utcnow() - timedelta(minutes=1)
    for param, value in _path_values(path, call.url).items():
        assert record.objects[PATH_OBJECTS[param]] == value, record.objects
    if action in MADE:
        kind, where = MADE[action]
        assert record.objects[kind] == pick(answer.json(), where), record.objects
    if record.objects.get("host") is not None:
        assert record.host == record.objects["host"]
    # As a viewer (every mutating route needs more): refused, and on record with its 403.
    call = build(ctx)
    before = _last_id(sessions)
    answer = ctx.client.request(
        call.method, call.url, json=call.json, headers=tokens.headers("viewer")
    )
    assert answer.status_code == 403, answer.text
    (refused,) = _since(sessions, before)
    assert (refused.actor, refused.role, refused.action) == ("test-viewer", "viewer", action)
    assert refused.status == 403
    assert refused.summary["error"] == answer.json()["detail"]  # "this needs the ... role"
    # Without a token: on record with its 401, by nobody.
    before = _last_id(sessions)
    answer = ctx.client.request(call.method, call.url, json=call.json)
    assert answer.status_code == 401
    (anonymous,) = _since(sessions, before)
    assert (anonymous.actor, anonymous.role, anonymous.status) == (None, None, 401)


@pytest.mark.parametrize(("method", "path"), READS, ids=[f"{m} {p}" for m, p in READS])
def test_reads_write_no_record(
    method: str, path: str, ctx: Ctx, sessions: sessionmaker[Session]
) -> None:
    _, build = ROLE_RULES[(method, path)]
    call = build(ctx)
    before = _last_id(sessions)
    for headers in (ctx.admin, {}):
        ctx.client.request(call.method, call.url, json=call.json, headers=headers)
    assert _since(sessions, before) == []


def test_a_refused_body_is_recorded_with_its_422(ctx: Ctx, sessions: sessionmaker[Session]) -> None:
    body = {**ctx.job_body(), "duration_s": -1, "params": {"x": "y" * 5000}}
    before = _last_id(sessions)
    answer = ctx.client.post("/v1/jobs", json=body, headers=ctx.tokens.headers("operator"))
    assert answer.status_code == 422
    (record,) = _since(sessions, before)
    assert (record.action, record.status, record.actor) == ("create_job", 422, "test-operator")
    assert record.summary["body"]["duration_s"] == -1
    assert record.summary["error"].startswith("duration_s: "), record.summary
    assert record.objects == {"hosts": [ctx.host]}
    assert len(json.dumps(record.summary)) <= 4096
    assert len(record.summary["body"]["params"]["x"]) <= 256


def test_an_unknown_route_writes_no_record(ctx: Ctx, sessions: sessionmaker[Session]) -> None:
    before = _last_id(sessions)
    assert ctx.client.post("/v1/nothing", json={}, headers=ctx.admin).status_code == 404
    assert ctx.client.put("/v1/jobs", json={}, headers=ctx.admin).status_code == 405
    assert _since(sessions, before) == []


def test_no_secret_is_in_any_record(
    ctx: Ctx, tokens: Tokens, sessions: sessionmaker[Session]
) -> None:
    before = _last_id(sessions)
    made = ctx.client.post(
        "/v1/tokens", json={"name": "ci", "role": "operator"}, headers=ctx.admin
    ).json()
    new_token = made["token"]
    # Secrets in a refused body: named fields, a private key and a token inside other values.
    hostile = {
        "name": f"sec-{uuid.uuid4().hex[:6]}",
        "labels": {"note": PEM, "who": new_token, "pub": f"ssh-ed25519 {SSH_PUB} me@laptop"},
        "private_key": PEM,
        "password": "hunter2-hunter2",
        "ssh_key": "AAAAC3NzaC1lZDI1NTE5AAAAIA-not-for-you",
        "api_token": new_token,
    }
    answer = ctx.client.post("/v1/hosts", json=hostile, headers=ctx.admin)
    assert answer.status_code == 422
    custom = {
        "program": "custom",
        "duration_s": 2,
        "targets": {"hosts": [ctx.host]},
        "source": f"// {new_token}\n/* {PEM} */ int x;",
        "maps": [{"name": "counts", "kind": "counter"}],
    }
    ctx.client.post("/v1/jobs", json=custom, headers=ctx.admin)
    # The new token used: its own calls are on record under its name, never its value.
    used = {"Authorization": f"Bearer {new_token}"}
    ctx.client.post("/v1/jobs", json=ctx.job_body(), headers=used)
    records = _since(sessions, before)
    assert len(records) == 4
    assert records[-1].actor == "ci"
    assert records[0].objects["token_id"] == str(made["id"])
    text = json.dumps([_row(r) for r in records])
    secrets = [new_token, tokens.token("admin"), "hunter2-hunter2", "not-for-you", *PEM_LINES]
    secrets.append(SSH_PUB)
    assert [s for s in secrets if s in text] == []
    assert records[1].summary["body"]["private_key"] == "***"


def _row(record: AuditRecord) -> dict[str, Any]:
    return {c.name: str(getattr(record, c.name)) for c in AuditRecord.__table__.columns}


# -- agents' refusals ------------------------------------------------------------------------


def _refuse(client: redis.Redis, host: str, refusal: Refusal, job_id: str | None = None) -> None:
    data = StreamEnvelope(host=host, job_id=job_id, event=refusal).model_dump_json()
    client.xadd(events_stream(host), {"data": data})


def test_refusals_on_the_stream_become_records(
    ctx: Ctx,
    ingest: IngestThread,
    redis_client: redis.Redis,
    dispatcher: RecordingDispatcher,
) -> None:
    job = submit(ctx.client, ctx.admin, targets={"hosts": [ctx.host]}, duration_s=2)
    run_id = job["runs"][0]["id"]
    other = f"aud-{uuid.uuid4().hex[:8]}"
    register_host(ctx.client, ctx.admin, other)
    _refuse(redis_client, ctx.host, Refusal(reason=RefusalReason.replay, run_id=run_id))
    detail = f"clang: error quoting {PEM}"
    _refuse(redis_client, ctx.host, Refusal(reason=RefusalReason.policy, detail=detail))
    # A host naming another host's run: on record, without that run's job.
    _refuse(redis_client, other, Refusal(reason=RefusalReason.wrong_host, run_id=run_id))

    def stored() -> list[dict[str, Any]] | None:
        answer = ctx.client.get(
            "/v1/audit", params={"action": "agent.refused.*"}, headers=ctx.admin
        )
        data: list[dict[str, Any]] = answer.json()["data"]
        mine = [r for r in data if r["host"] in (ctx.host, other)]
        return mine if len(mine) == 3 else None

    records = wait_for(stored, 15, "the refusals on record")
    by_action = {r["action"]: r for r in records}
    replay = by_action["agent.refused.replay"]
    assert (replay["actor"], replay["role"], replay["source"]) == (ctx.host, "agent", "agent")
    assert replay["objects"] == {"host": ctx.host, "run": run_id, "job": job["id"]}
    policy = by_action["agent.refused.policy"]
    assert policy["summary"]["detail"].startswith("clang: error quoting -----PRIVATE KEY ***")
    assert not any(line in json.dumps(records) for line in PEM_LINES)
    wrong = by_action["agent.refused.wrong_host"]
    assert wrong["objects"] == {"host": other, "run": run_id}
    # Newest first. The two hosts' streams are read in no fixed order, so only the order of
    # the records themselves is checked, not which host's refusal was stored last.
    assert [r["at"] for r in records] == sorted((r["at"] for r in records), reverse=True)
    assert ingest.running


def test_record_agent_event_is_there_for_other_checks(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        audit.record_agent_event(
            session, host="web-1", action="agent.impersonation", detail="claimed web-2"
        )
        session.commit()
        (record,) = session.scalars(
            select(AuditRecord).where(AuditRecord.action == "agent.impersonation")
        )
    assert (record.actor, record.host, record.summary) == (
        "web-1",
        "web-1",
        {"detail": "claimed web-2"},
    )


# -- GET /v1/audit ------------------------------------------------------------------------------


def test_audit_filters_and_pages(ctx: Ctx, sessions: sessionmaker[Session]) -> None:
    mark = f"f{uuid.uuid4().hex[:6]}"
    now = utcnow()
    made = [
        (f"{mark}-a", "create_job", None),
        (f"{mark}-a", "cancel_job", None),
        (f"{mark}-b", "update_host", f"{mark}-h"),
        (f"{mark}-h", "agent.refused.policy", f"{mark}-h"),
    ]
    with sessions() as session:
        for i, (actor, action, host) in enumerate(made):
            # Spread over time: an hour apart, oldest first.
            at = now - timedelta(hours=len(made) - i)
            session.add(AuditRecord(at=at, source="api", actor=actor, action=action, host=host))
        session.commit()

    def get(**params: Any) -> list[str]:
        answer = ctx.client.get("/v1/audit", params=params, headers=ctx.admin)
        assert answer.status_code == 200, answer.text
        return [r["action"] for r in answer.json()["data"] if r["actor"].startswith(mark)]

    assert get(actor=f"{mark}-a") == ["cancel_job", "create_job"]
    assert get(host=f"{mark}-h") == ["agent.refused.policy", "update_host"]
    assert get(action="agent.refused.*", actor=f"{mark}-h") == ["agent.refused.policy"]
    assert get(action="update_host", actor=f"{mark}-b") == ["update_host"]
    since = (now - timedelta(hours=2, minutes=30)).isoformat()
    until = (now - timedelta(minutes=90)).isoformat()
    assert get(actor=f"{mark}-b", since=since) == ["update_host"]
    assert get(actor=f"{mark}-a", since=since, until=until) == []
    assert get(actor=f"{mark}-a", until=until) == ["cancel_job", "create_job"]
    answer = ctx.client.get("/v1/audit", params={"actor": f"{mark}-a", "limit": 1, "offset": 1})
    answer = ctx.client.get(
        "/v1/audit", params={"actor": f"{mark}-a", "limit": 1, "offset": 1}, headers=ctx.admin
    )
    assert [r["action"] for r in answer.json()["data"]] == ["create_job"]
    assert answer.json()["count"] == 2


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"offset": -1}, "offset"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
        ({"actor": "x" * 129}, "actor"),
    ],
)
def test_bad_audit_queries_name_the_field(ctx: Ctx, params: dict[str, Any], field: str) -> None:
    answer = ctx.client.get("/v1/audit", params=params, headers=ctx.admin)
    assert answer.status_code == 422
    assert field_paths(answer) == [f"query.{field}"], answer.text


def test_only_admins_read_the_audit_log(ctx: Ctx, tokens: Tokens) -> None:
    for role in ("viewer", "operator"):
        answer = ctx.client.get("/v1/audit", headers=tokens.headers(role))
        assert answer.status_code == 403, role
    assert ctx.client.get("/v1/audit").status_code == 401


# -- retention ------------------------------------------------------------------------------------


def test_retention_prunes_old_records_in_small_batches(
    settings: Settings, sessions: sessionmaker[Session], dispatcher: RecordingDispatcher
) -> None:
    mark = f"old-{uuid.uuid4().hex[:6]}"
    now = datetime.now(timezone.utc)
    with sessions() as session:
        for age_days in [40.0] * (audit.PRUNE_BATCH + 20) + [29.0, 1.0]:
            session.add(
                AuditRecord(
                    at=now - timedelta(days=age_days),
                    source="agent",
                    actor=mark,
                    action="agent.refused.replay",
                    objects={},
                    summary={},
                )
            )
        session.commit()

    def left() -> int:
        with sessions() as session:
            query = select(func.count()).where(AuditRecord.actor == mark)
            return int(session.scalar(query) or 0)

    with sessions() as session:
        assert audit.prune(session=session, older_than=timedelta(days=30), batches=1) >= 500
    assert left() == 22
    scheduler = Scheduler(
        settings.model_copy(update={"audit_retention_days": 30}), sessions, dispatcher
    )
    assert scheduler.prune_audit() >= 20
    assert left() == 2
    scheduler = Scheduler(
        settings.model_copy(update={"audit_retention_days": 2}), sessions, dispatcher
    )
    scheduler.step()  # the loop prunes by itself
    assert left() == 1


# -- bad days ------------------------------------------------------------------------------------


def test_a_body_too_big_to_keep_is_counted_not_parsed(
    ctx: Ctx, sessions: sessionmaker[Session]
) -> None:
    body = {**ctx.job_body(), "params": {"x": "y" * (1 << 20)}}
    before = _last_id(sessions)
    answer = ctx.client.post("/v1/jobs", json=body, headers=ctx.admin)
    assert answer.status_code == 422
    (record,) = _since(sessions, before)
    assert re.fullmatch(r"\[\d+ bytes, not kept\]", record.summary["body"]), record.summary
    assert record.status == 422


@pytest.mark.parametrize("shape", ["a://x:", "a://", "a:", "PASSWORD", "ft_"])
def test_a_hostile_body_just_under_the_limit_is_summarized_without_a_stall(
    ctx: Ctx, sessions: sessionmaker[Session], shape: str
) -> None:
    """Strings shaped to make secret-masking patterns backtrack (a URL scheme, over and over,
    ~1 MB, no token): the answer and its record come at once. Before the patterns were
    bounded, one such body held a worker for half an hour (quadratic in its size)."""
    text = shape * ((1 << 20) // len(shape) - 64)
    before = _last_id(sessions)
    answer = ctx.client.post("/v1/jobs", json={"program": text})
    assert answer.status_code == 401
    (record,) = _since(sessions, before)
    assert record.status == 401
    kept = record.summary["body"]["program"]
    assert len(kept) <= 256 and kept.startswith(shape[:3])


def test_many_callers_at_once_get_one_record_each(
    ctx: Ctx, tokens: Tokens, sessions: sessionmaker[Session]
) -> None:
    names = [f"many-{uuid.uuid4().hex[:8]}" for _ in range(24)]
    roles = ["admin", "viewer", "operator"]
    before = _last_id(sessions)

    def call(i: int) -> int:
        headers = tokens.headers(roles[i % 3])
        answer = ctx.client.post("/v1/hosts", json={"name": names[i]}, headers=headers)
        return int(answer.status_code)

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(call, range(len(names))))
    records = _since(sessions, before)
    assert sorted((r.objects["host"], r.status, r.actor) for r in records) == sorted(
        (names[i], statuses[i], f"test-{roles[i % 3]}") for i in range(len(names))
    )
    assert sorted(set(statuses)) == [201, 403]


def test_when_the_record_cannot_be_written_the_answer_still_goes_out(
    settings: Settings,
    tmp_path: Path,
    dispatcher: RecordingDispatcher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"sqlite:///{tmp_path / 'broken.db'}"
    upgrade(url)
    app = create_app(settings.model_copy(update={"database_url": url}), dispatcher)
    with app.state.sessions() as session:
        _, raw = auth_service.create(session=session, name="broken", role=Role.admin)
        session.commit()
        session.execute(text("DROP TABLE audit_records"))
        session.commit()
    with TestClient(app) as client, caplog.at_level(logging.ERROR):
        headers = {"Authorization": f"Bearer {raw}"}
        answer = client.post("/v1/hosts", json={"name": "still-made"}, headers=headers)
    app.state.engine.dispose()
    assert answer.status_code == 201
    assert "audit: could not record POST /v1/hosts by broken (status 201)" in caplog.text


FINGERPRINT = "SHA256:" + "A" * 43


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"Authorization": "Bearer x", "api_key": "k", "key": "k"}, {"Authorization": "***"}),
        ({"host_key_fingerprint": FINGERPRINT}, {"host_key_fingerprint": FINGERPRINT}),
        ({"url": "redis://agent:s3cr3t@redis:6379/0"}, {"url": "redis://agent:***@redis:6379/0"}),
        ({"note": "FLEETTRACE_TOKEN=abc123 and password: xyz"}, {"note": "FLEETTRACE_TOKEN=***"}),
        ({"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}, {"a": {"b": {"c": {"d": "{1 fields}"}}}}),
        ({"items": list(range(1000))}, {"items": [*range(20), "... 980 more"]}),
        ({"password": ""}, {"password": ""}),
    ],
    ids=["auth-names", "fingerprint-kept", "url-password", "assignments", "depth", "long-list",
         "empty-secret"],
)  # fmt: skip
def test_summaries_mask_secrets_and_stay_bounded(body: Any, expected: dict[str, Any]) -> None:
    summary = summarize(body)["body"]
    for key, value in expected.items():
        got = summary[key]
        assert got == value or (isinstance(value, str) and got.startswith(value)), (key, got)
    assert "k" not in summary.values()
    assert "xyz" not in json.dumps(summary) and "abc123" not in json.dumps(summary)


def test_a_huge_summary_is_cut_shallower() -> None:
    body = {f"field_{i}": {"x": "y" * 300, "z": list(range(30))} for i in range(200)}
    summary = summarize(body, {"page": ["1"]})
    assert len(json.dumps(summary)) <= MAX_SUMMARY_CHARS
    assert summary["body"]["..."] == "190 more fields"
    assert summary["body"]["field_0"] == {"x": "y" * 63 + "…", "z": "[30 items]"}
    assert summary["query"] == {"page": "1"}
