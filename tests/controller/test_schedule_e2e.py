"""A real schedule on a short interval firing real traces on two real agents, and its trend."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from controller.schedules.scheduler import Scheduler
from controller.settings import Settings
from tests.controller.conftest import Agents, RecordingDispatcher, Tokens
from tests.controller.support import get_job, job_final, wait_for

pytestmark = pytest.mark.bcc

INTERVAL_S = 3.0


@pytest.fixture(scope="module")
def fleet(agent: Agents, client: TestClient, tokens: Tokens) -> str:
    """Two agents labelled with a role only they carry; returns the role."""
    role = f"sched-{uuid.uuid4().hex[:6]}"
    started = [agent.start(f"{role}-{i}", wait=False) for i in (1, 2)]
    for one in started:
        agent.wait_online(one)
        answer = client.patch(
            f"/v1/hosts/{one.host}",
            json={"labels": {"role": role}},
            headers=tokens.headers("admin"),
        )
        assert answer.status_code == 200, answer.text
    return role


@pytest.fixture
def scheduler(
    settings: Settings, sessions: sessionmaker[Session], dispatcher: RecordingDispatcher
) -> Iterator[Scheduler]:
    loop = Scheduler(settings, sessions, dispatcher, tick_s=0.1)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run_forever, args=(stop,), name="scheduler")
    thread.start()
    yield loop
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive(), "scheduler did not stop"


def test_a_short_interval_schedule_runs_real_traces_on_every_labelled_host(
    client: TestClient, tokens: Tokens, fleet: str, scheduler: Scheduler
) -> None:
    body = {
        "name": f"every-{uuid.uuid4().hex[:6]}",
        "interval_s": INTERVAL_S,
        "allow_overlap": True,
        "template": {
            "program": "syscalls",
            "duration_s": 2,
            "targets": {"selector": {"role": fleet}},
        },
    }
    viewer = tokens.headers("viewer")
    answer = client.post("/v1/schedules", json=body, headers=tokens.headers("operator"))
    assert answer.status_code == 201, answer.text
    url = f"/v1/schedules/{answer.json()['id']}"

    def two_done() -> list[dict[str, Any]] | None:
        fired = [f for f in client.get(url, headers=viewer).json()["recent"] if f["job_id"]]
        jobs = [get_job(client, viewer, f["job_id"]) for f in fired]
        done = [j for j in jobs if job_final(j)]
        return done if len(done) >= 2 else None

    jobs = wait_for(two_done, 20, "two scheduled jobs to finish", every_s=0.2)
    client.post(f"{url}/pause", headers=tokens.headers("operator"))
    for job in jobs[:2]:
        assert job["state"] == "succeeded", job
        assert sorted(r["host"] for r in job["runs"]) == [f"{fleet}-1", f"{fleet}-2"]
        assert all(r["snapshots"] >= 1 for r in job["runs"]), job
        results = client.get(f"/v1/jobs/{job['id']}/results", headers=viewer).json()
        for host in results["hosts"]:
            counts = [r for r in host["results"] if r["kind"] == "counter_table"]
            assert counts and counts[0]["rows"], host
    shown = client.get(url, headers=viewer).json()
    slots = sorted(parse(f["slot"]) for f in shown["recent"] if f["outcome"] == "fired")
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(slots)}
    assert len(slots) >= 2 and gaps == {INTERVAL_S}, slots
    answer = client.get(f"{url}/trend", params={"metric": "rate:syscalls"}, headers=viewer)
    assert answer.status_code == 200, answer.text
    trend = answer.json()
    assert trend["unit"] == "count/s"
    assert [s["host"] for s in trend["series"]] == [f"{fleet}-1", f"{fleet}-2"]
    for series in trend["series"]:
        done = [p for p in series["points"] if p["job_id"] in {j["id"] for j in jobs[:2]}]
        assert len(done) == 2 and all(p["value"] > 0 for p in done), series


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
