"""Job rows read back typed: the stored JSON (the same as before) loads as Scope, Limits,
Targets and MapDecl."""

from __future__ import annotations

import json
import uuid

from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from controller.jobs.models import Job, Targets
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
