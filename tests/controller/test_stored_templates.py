"""Job and schedule rows read back typed: stored JSON loads as Scope, Limits, Targets and
MapDecl; a schedule template stored under the old, looser duration bound fails its slot
saying why instead of failing the scheduler."""

from __future__ import annotations

import json
import uuid

from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from controller.jobs.models import Job, Targets
from controller.schedules.models import Schedule
from node_agent.protocol import Limits, Scope
from tests.controller.conftest import Tokens
from tests.controller.support import register_host


def test_a_job_stores_the_json_it_always_did_and_reads_it_back_typed(
    client: TestClient, tokens: Tokens, sessions: sessionmaker[Session]
) -> None:
    host = f"typed-{uuid.uuid4().hex[:6]}"
    register_host(client, tokens.headers("admin"), host, role="typed")
    body = {
        "program": "syscalls",
        "duration_s": 2,
        "scope": {"pid": 7},
        "limits": {"max_rows": 50},
        "targets": {"hosts": [host]},
    }
    answer = client.post("/v1/jobs", json=body, headers=tokens.headers("operator"))
    assert answer.status_code == 201, answer.text
    job_id = answer.json()["id"]
    with sessions() as session:
        raw = session.execute(
            text("SELECT scope, limits, targets, maps FROM jobs WHERE id = :id"), {"id": job_id}
        ).one()
        job = session.scalar(select(Job).where(Job.id == job_id))
    assert job is not None
    stored = [v if isinstance(v, dict | list) else json.loads(v) for v in raw]
    assert stored[0] == {"pid": 7}
    assert stored[1] == Limits(max_rows=50).model_dump()
    assert stored[2] == {"hosts": [host]}
    assert stored[3] == []
    assert job.scope == Scope(pid=7) and job.limits.max_rows == 50
    assert job.targets == Targets(hosts=[host]) and job.maps == []
    public = answer.json()
    assert public["scope"]["pid"] == 7 and public["limits"]["max_rows"] == 50


def test_a_template_over_the_day_bound_fails_its_slot_with_the_reason(
    client: TestClient, tokens: Tokens, sessions: sessionmaker[Session]
) -> None:
    role = f"old-{uuid.uuid4().hex[:6]}"
    register_host(client, tokens.headers("admin"), f"{role}-1", role=role)
    schedule = {
        "name": f"s-{uuid.uuid4().hex[:8]}",
        "interval_s": 60,
        "template": {
            "program": "syscalls",
            "duration_s": 2,
            "targets": {"selector": {"role": role}},
        },
    }
    created = client.post("/v1/schedules", json=schedule, headers=tokens.headers("operator"))
    assert created.status_code == 201, created.text
    schedule_id = created.json()["id"]
    with sessions() as session:  # as a controller before the bound was a day could store it
        row = session.get(Schedule, schedule_id)
        assert row is not None
        row.template = {**row.template, "duration_s": 2 * 86400.0}
        session.commit()
    answer = client.post(f"/v1/schedules/{schedule_id}/run", headers=tokens.headers("operator"))
    assert answer.status_code == 200, answer.text
    latest = answer.json()["recent"][0]
    assert latest["outcome"] == "failed", latest
    assert "duration_s" in latest["reason"] and "no longer validates" in latest["reason"], latest
