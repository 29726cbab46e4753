"""A real continuous schedule: one loaded trace per horizon on two real agents, a point per
snapshot in its trend, and the per-slot numbers adding up to the job's cumulative ones."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.schedules.scheduler import Scheduler
from tests.controller import test_schedule_e2e as e2e
from tests.controller.conftest import Tokens
from tests.controller.support import wait_for

pytestmark = pytest.mark.bcc

# The fixtures of test_schedule_e2e (two labelled agents, a fast scheduler tick), bound here.
fleet, scheduler_tick_s = e2e.fleet, e2e.scheduler_tick_s
INTERVAL_S = 1.0
HORIZON_S = 3.0


def test_a_continuous_schedule_takes_a_snapshot_per_slot_on_real_agents(
    client: TestClient, tokens: Tokens, fleet: str, scheduler: Scheduler
) -> None:
    template = {"params": {"per_process": False}, "duration_s": HORIZON_S}
    url = e2e.create(client, tokens, fleet, template, interval_s=INTERVAL_S, continuous=True)
    viewer = tokens.headers("viewer")

    def one_done() -> dict[str, Any] | None:
        done = e2e.finished_jobs(client, viewer, url)
        return done[-1] if done else None  # recent is newest first: the first horizon

    job = wait_for(one_done, 20, "the first horizon to finish", every_s=0.2)
    client.post(f"{url}/pause", headers=tokens.headers("operator"))
    assert job["state"] == "succeeded", job
    assert (job["duration_s"], job["interval_s"]) == (HORIZON_S, INTERVAL_S)
    assert all(r["snapshots"] >= 3 for r in job["runs"]), job["runs"]

    def points(metric: str) -> dict[str, list[dict[str, Any]]]:
        answer = client.get(f"{url}/trend", params={"metric": metric}, headers=viewer)
        assert answer.status_code == 200, answer.text
        return {
            s["host"]: [p for p in s["points"] if p["job_id"] == job["id"]]
            for s in answer.json()["series"]
        }

    rates = points("rate:syscalls")
    assert sorted(rates) == [f"{fleet}-1", f"{fleet}-2"]
    results = client.get(f"/v1/jobs/{job['id']}/results", headers=viewer).json()
    totals = points("total:syscalls")
    for host in results["hosts"]:
        series = rates[host["host"]]
        runs = next(r for r in job["runs"] if r["host"] == host["host"])
        assert len(series) == runs["snapshots"] and all(p["value"] > 0 for p in series), series
        slots = [p["slot"] for p in series]
        assert slots == sorted(slots) and len(set(slots)) == len(slots)
        table = next(r for r in host["results"] if r["kind"] == "counter_table")
        # Per syscall, not per process: few rows, so no snapshot is cut by max_rows.
        assert not table["truncated"]
        cumulative = sum(values[0] for _, values in table["rows"])
        per_slot = [p["value"] for p in totals[host["host"]]]
        assert len(per_slot) >= 3 and sum(per_slot) == cumulative, (per_slot, cumulative)
