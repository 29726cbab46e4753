"""A real schedule on a short interval firing real traces on two real agents, and its trend."""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.schedules.scheduler import Scheduler
from tests.controller.conftest import Agents, Tokens
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
def scheduler_tick_s() -> float:
    """Slots a few seconds apart: the conftest's scheduler looks for them every 0.1 s."""
    return 0.1


def create(
    client: TestClient, tokens: Tokens, fleet: str, template: dict[str, Any], **fields: Any
) -> str:
    """Creates a syscalls schedule over the fleet's role as an operator; returns its URL."""
    targets = {"selector": {"role": fleet}}
    body = {
        "name": f"e2e-{uuid.uuid4().hex[:6]}",
        **fields,
        "template": {"program": "syscalls", **template, "targets": targets},
    }
    answer = client.post("/v1/schedules", json=body, headers=tokens.headers("operator"))
    assert answer.status_code == 201, answer.text
    return f"/v1/schedules/{answer.json()['id']}"


def finished_jobs(client: TestClient, viewer: dict[str, str], url: str) -> list[dict[str, Any]]:
    """The schedule's fired jobs that have ended, newest first."""
    fired = [f for f in client.get(url, headers=viewer).json()["recent"] if f["job_id"]]
    jobs = [get_job(client, viewer, f["job_id"]) for f in fired]
    return [j for j in jobs if job_final(j)]


def test_a_short_interval_schedule_runs_real_traces_on_every_labelled_host(
    client: TestClient, tokens: Tokens, fleet: str, scheduler: Scheduler
) -> None:
    template = {"duration_s": 2}
    url = create(client, tokens, fleet, template, interval_s=INTERVAL_S, allow_overlap=True)
    viewer = tokens.headers("viewer")

    def two_done() -> list[dict[str, Any]] | None:
        done = finished_jobs(client, viewer, url)
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
