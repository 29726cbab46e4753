"""Continuous schedules: a horizon job with a snapshot per interval, per-slot deltas in the trend.

The app is real (SQLite, TestClient); agents are the dispatcher stub of test_cli_client, and
snapshots are written as an agent's cumulative ones would be.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from controller.jobs.models import Run as RunRow
from controller.schedules import service
from controller.schedules.continuous import delta
from controller.schedules.models import Schedule
from node_agent.protocol import Log2Histogram
from tests.controller import test_cli_client as base
from tests.controller.support import counters, field_paths, snapshot_row

stub, cli_app, admin, http, run = base.stub, base.cli_app, base.admin, base.http, base.run
Run = base.Run
AgentStub = base.AgentStub
T0 = 1_800_000_000.0


def test_delta_subtracts_cumulative_snapshots() -> None:
    before = [
        Log2Histogram(name="lat", unit="us", labels={"cpu": 0}, buckets=[(3, 5), (4, 1)]),
        Log2Histogram(name="lat", unit="us", labels={"cpu": 1}, buckets=[(3, 2)]),
        counters("syscalls", {"read": 10, "write": 4}),
    ]
    after = [
        Log2Histogram(name="lat", unit="us", labels={"cpu": 0}, buckets=[(3, 9), (4, 1), (6, 2)]),
        Log2Histogram(name="lat", unit="us", labels={"cpu": 1}, buckets=[(3, 2)]),
        counters("syscalls", {"read": 15, "write": 4, "openat": 7}),
    ]
    hist0, hist1, table = delta(after, before)
    assert isinstance(hist0, Log2Histogram) and hist0.buckets == [(3, 4), (6, 2)]
    assert isinstance(hist1, Log2Histogram) and hist1.buckets == []
    assert table.model_dump()["rows"] == [(["openat"], [7]), (["read"], [5])]
    assert delta(after, None) == after  # the first snapshot counts from the start
    # A key cut by max_rows earlier looks new: clamped, never negative.
    shrunk = delta([counters("syscalls", {"read": 3})], [counters("syscalls", {"read": 9})])
    assert shrunk[0].model_dump()["rows"] == []


def _create(http: TestClient, headers: dict[str, str], **extra: Any) -> Any:
    template = {"program": "syscalls", "duration_s": 60, "targets": {"all": True}}
    body = {"name": "live", "interval_s": 10, "continuous": True, "template": template, **extra}
    return http.post("/v1/schedules", json=body, headers=headers)


def test_continuous_needs_an_interval_and_a_horizon_of_two_intervals(
    http: TestClient, admin: str, run: Run
) -> None:
    headers = {"Authorization": f"Bearer {admin}"}
    run("hosts", "add", "web-1")
    answer = _create(http, headers, interval_s=None, cron="* * * * *")
    assert answer.status_code == 422 and field_paths(answer) == ["cron"], answer.text
    answer = _create(http, headers, interval_s=40)
    assert answer.status_code == 422 and field_paths(answer) == ["template.duration_s"]
    answer = _create(http, headers)
    assert answer.status_code == 201, answer.text
    made = answer.json()
    assert made["continuous"] is True and made["template"]["interval_s"] == 10
    created = answer.json()["created_at"]
    # The first horizon starts one interval after creation, then one per horizon.
    with_ms = made["next_fire_at"].replace("Z", "+00:00")
    from datetime import datetime

    gap = datetime.fromisoformat(with_ms) - datetime.fromisoformat(created.replace("Z", "+00:00"))
    assert gap == timedelta(seconds=10)
    sid = made["id"]
    answer = http.patch(f"/v1/schedules/{sid}", json={"interval_s": 31}, headers=headers)
    assert answer.status_code == 422 and field_paths(answer) == ["template.duration_s"]
    answer = http.patch(f"/v1/schedules/{sid}", json={"interval_s": 20}, headers=headers)
    assert answer.status_code == 200 and answer.json()["template"]["interval_s"] == 20
    answer = http.patch(f"/v1/schedules/{sid}", json={"cron": "0 * * * *"}, headers=headers)
    assert answer.status_code == 422 and field_paths(answer) == ["cron"]


def test_horizons_fire_one_long_job_each_and_hand_over(
    http: TestClient, admin: str, run: Run, stub: AgentStub
) -> None:
    headers = {"Authorization": f"Bearer {admin}"}
    run("hosts", "add", "web-1")
    sid = _create(http, headers).json()["id"]
    assert stub.sessions is not None and stub.settings is not None
    with stub.sessions() as session:
        schedule = session.get(Schedule, sid)
        assert schedule is not None and schedule.next_fire_at is not None
        due = schedule.next_fire_at
        for _ in range(2):  # the first job never finishes: the second still fires
            plan = service.fire_due(
                session=session,
                settings=stub.settings,
                dispatcher=stub,
                schedule_id=sid,
                due=due,
                now=due + timedelta(seconds=1),
            )
            assert plan is not None and plan.fire == due
            assert plan.next_fire_at == due + timedelta(seconds=60)
            due = plan.next_fire_at
    sent = [request for _, request in stub.sent]
    assert [(r.duration_s, r.interval_s) for r in sent] == [(60, 10), (60, 10)]
    recent = http.get(f"/v1/schedules/{sid}", headers=headers).json()["recent"]
    assert [f["outcome"] for f in recent] == ["fired", "fired"]


def test_trend_has_a_point_per_snapshot_from_the_differences(
    http: TestClient, admin: str, run: Run, stub: AgentStub
) -> None:
    headers = {"Authorization": f"Bearer {admin}"}
    for name in ("web-1", "web-2"):
        run("hosts", "add", name)
    sid = _create(http, headers).json()["id"]
    job_id = http.post(f"/v1/schedules/{sid}/run", headers=headers).json()["recent"][0]["job_id"]
    # Cumulative counts as agents send them: web-1 does 10, 20, 5 reads in its three slots.
    cumulative = {"web-1": [10, 30, 35], "web-2": [1, 2, 3]}
    assert stub.sessions is not None
    with stub.sessions() as session:
        for row in session.scalars(select(RunRow).where(RunRow.job_id == job_id)):
            for seq, reads in enumerate(cumulative[row.host_name]):
                results = [counters("syscalls", {"read": reads}).model_dump(mode="json")]
                interval = (T0 + 10 * seq, T0 + 10 * (seq + 1))
                session.add(
                    snapshot_row(row, seq, final=seq == 2, interval=interval, results=results)
                )
        session.commit()
    answer = http.get(
        f"/v1/schedules/{sid}/trend", params={"metric": "rate:syscalls"}, headers=headers
    )
    assert answer.status_code == 200, answer.text
    series = {s["host"]: s["points"] for s in answer.json()["series"]}
    assert [p["value"] for p in series["web-1"]] == [1.0, 2.0, 0.5]
    assert [p["value"] for p in series["web-2"]] == [0.1, 0.1, 0.1]
    assert {p["job_id"] for p in series["web-1"]} == {job_id}
    code, out, err = run("schedules", "trend", "live", "--metric", "total:syscalls")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "total:syscalls (count) for schedule live: 3 slots"
    assert lines[2].split()[0] == "web-1" and lines[2].split()[-4:] == ["10", "20", "5", "▃█▁"]
    assert lines[3].split()[-4:] == ["1", "1", "1", "▁▁▁"]
    code, out, _ = run("schedules", "show", "live", "--json")
    assert json.loads(out)["continuous"] is True
