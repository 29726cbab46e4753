"""Schedules on a real database (SQLite and PostgreSQL): validation, firing, racing, retention."""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from controller.db import make_engine, make_sessionmaker
from controller.jobs.models import Job, JobEvent, Run, SnapshotRow
from controller.reports import store as digests
from controller.reports.store import RunDigestRow
from controller.schedules import retention
from controller.schedules.models import Schedule, ScheduleFire
from controller.schedules.scheduler import Scheduler
from controller.settings import Settings
from node_agent.protocol import TraceRequest
from tests.controller.conftest import Tokens
from tests.controller.support import field_paths, register_host, snapshot_row


@pytest.fixture(scope="module")
def database_url(db_url: str) -> str:
    return db_url


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


class CountingDispatcher:
    """Records sends: the race is about claims in the database, not about Celery."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: list[tuple[str, TraceRequest]] = []

    def send_all(
        self, work: Sequence[tuple[str, TraceRequest]], *, expires_s: float
    ) -> list[tuple[TraceRequest, Exception]]:
        with self.lock:
            self.sent.extend(work)
        return []

    def request_cancel(self, *, host: str, run_id: str) -> None:
        pass

    def forget_host(self, *, host: str) -> None:
        pass


@pytest.fixture(scope="module")
def role(client: TestClient, tokens: Tokens) -> str:
    """A label value only this module's hosts carry; one host to start with."""
    value = f"web-{uuid.uuid4().hex[:6]}"
    register_host(client, tokens.headers("admin"), f"{value}-1", role=value)
    return value


def body(role: str, **extra: Any) -> dict[str, Any]:
    schedule: dict[str, Any] = {
        "name": f"s-{uuid.uuid4().hex[:8]}",
        "interval_s": 60,
        "template": {
            "program": "syscalls",
            "duration_s": 2,
            "targets": {"selector": {"role": role}},
        },
    }
    schedule.update(extra)
    return schedule


def make(client: TestClient, tokens: Tokens, role: str, **extra: Any) -> dict[str, Any]:
    answer = client.post(
        "/v1/schedules", json=body(role, **extra), headers=tokens.headers("operator")
    )
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def two_host_schedule(
    client: TestClient, tokens: Tokens, prefix: str
) -> tuple[list[str], dict[str, Any]]:
    """Two new hosts under a fresh role label and a schedule over them: (hosts, schedule)."""
    label = f"{prefix}-{uuid.uuid4().hex[:6]}"
    hosts = [f"{label}-a", f"{label}-b"]
    for host in hosts:
        register_host(client, tokens.headers("admin"), host, role=label)
    return hosts, make(client, tokens, label)


@pytest.fixture
def new_schedule(client: TestClient, tokens: Tokens, role: str) -> Callable[..., dict[str, Any]]:
    """Creates a schedule on this module's role, its fields overridden by keyword."""
    return functools.partial(make, client, tokens, role)


def fires(sessions: sessionmaker[Session], schedule_id: str) -> list[ScheduleFire]:
    with sessions() as session:
        return list(
            session.scalars(
                select(ScheduleFire)
                .where(ScheduleFire.schedule_id == schedule_id)
                .order_by(ScheduleFire.slot)
            )
        )


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"interval_s": None, "cron": "61 * * * *"}, "cron"),
        ({"interval_s": None, "cron": "every hour"}, "cron"),
        ({"interval_s": None, "cron": "0 3 * * *", "time_zone": "Nowhere/Land"}, "time_zone"),
        ({"interval_s": 0}, "interval_s"),
        ({"interval_s": -1}, "interval_s"),
        (
            {"template": {"program": "nope", "duration_s": 2, "targets": {"all": True}}},
            "template.program",
        ),
        (
            {
                "template": {
                    "program": "syscalls",
                    "params": {"bogus": 1},
                    "duration_s": 2,
                    "targets": {"all": True},
                }
            },
            "template.params.bogus",
        ),
        (
            {"template": {"program": "syscalls", "duration_s": 0, "targets": {"all": True}}},
            "template.duration_s",
        ),
        ({"template": {"program": "syscalls", "duration_s": 2}}, "template.targets"),
        ({"retention": {"max_runs": 0}}, "retention.max_runs"),
        ({"misfire_grace_s": -1}, "misfire_grace_s"),
    ],
)
def test_bad_schedules_are_422_naming_the_field(
    client: TestClient, tokens: Tokens, role: str, change: dict[str, Any], field: str
) -> None:
    payload = {k: v for k, v in {**body(role), **change}.items() if v is not None}
    answer = client.post("/v1/schedules", json=payload, headers=tokens.headers("operator"))
    assert answer.status_code == 422, answer.text
    assert field in field_paths(answer), answer.text


def test_cron_and_interval_together_or_neither_are_refused(
    client: TestClient, tokens: Tokens, role: str
) -> None:
    both = body(role, cron="0 * * * *")
    neither = {k: v for k, v in body(role).items() if k != "interval_s"}
    for payload in (both, neither):
        answer = client.post("/v1/schedules", json=payload, headers=tokens.headers("operator"))
        assert answer.status_code == 422, answer.text


def test_update_is_validated_too_and_a_duplicate_name_conflicts(
    client: TestClient, tokens: Tokens, role: str
) -> None:
    created = make(client, tokens, role)
    headers = tokens.headers("operator")
    url = f"/v1/schedules/{created['id']}"
    answer = client.patch(url, json={"cron": "0 25 * * *"}, headers=headers)
    assert answer.status_code == 422 and field_paths(answer) == ["cron"], answer.text
    answer = client.patch(
        url,
        json={
            "template": {
                "program": "syscalls",
                "params": {"x": 1},
                "duration_s": 2,
                "targets": {"all": True},
            }
        },
        headers=headers,
    )
    assert field_paths(answer) == ["template.params.x"], answer.text
    again = client.post("/v1/schedules", json=body(role, name=created["name"]), headers=headers)
    assert again.status_code == 409, again.text


def test_crud_pause_resume_and_next_fire_time(
    client: TestClient, tokens: Tokens, role: str
) -> None:
    headers = tokens.headers("operator")
    created = make(
        client, tokens, role, cron="0 3 * * *", interval_s=None, time_zone="Europe/Berlin"
    )
    assert created["interval_s"] is None and created["recent"] == []
    next_at = parse(created["next_fire_at"])
    assert next_at.astimezone(ZoneInfo("Europe/Berlin")).hour == 3
    url = f"/v1/schedules/{created['id']}"
    assert client.get(url, headers=tokens.headers("viewer")).json()["name"] == created["name"]
    listed = client.get("/v1/schedules", headers=tokens.headers("viewer")).json()
    assert created["id"] in [s["id"] for s in listed["data"]]
    paused = client.post(f"{url}/pause", headers=headers).json()
    assert paused["enabled"] is False and paused["next_fire_at"] is None
    resumed = client.post(f"{url}/resume", headers=headers).json()
    assert resumed["enabled"] is True and parse(resumed["next_fire_at"]) == next_at
    changed = client.patch(url, json={"interval_s": 30}, headers=headers).json()
    assert changed["cron"] is None and changed["interval_s"] == 30
    assert parse(changed["next_fire_at"]) - datetime.now(next_at.tzinfo) <= timedelta(seconds=31)
    assert client.delete(url, headers=headers).status_code == 204
    assert client.get(url, headers=headers).status_code == 404


# -- firing ---------------------------------------------------------------------------------------


def test_run_now_resolves_targets_at_each_fire(
    client: TestClient, tokens: Tokens, role: str, sessions: sessionmaker[Session]
) -> None:
    created = make(client, tokens, role)
    url = f"/v1/schedules/{created['id']}/run"
    first = client.post(url, headers=tokens.headers("operator")).json()["recent"][0]
    assert first["outcome"] == "fired" and first["manual"] is True
    register_host(client, tokens.headers("admin"), f"{role}-2", role=role)
    second = client.post(url, headers=tokens.headers("operator")).json()["recent"][0]
    with sessions() as session:
        hosts = {
            job_id: sorted(session.scalars(select(Run.host_name).where(Run.job_id == job_id)))
            for job_id in (first["job_id"], second["job_id"])
        }
        made_by = session.scalar(select(Job.created_by).where(Job.id == second["job_id"]))
    assert hosts[first["job_id"]] == [f"{role}-1"]
    assert hosts[second["job_id"]] == [f"{role}-1", f"{role}-2"]
    assert made_by == f"schedule:{created['name']}"


def test_a_fire_with_no_matching_host_is_recorded_as_failed(
    client: TestClient, tokens: Tokens
) -> None:
    created = make(client, tokens, f"nobody-{uuid.uuid4().hex[:6]}")
    answer = client.post(f"/v1/schedules/{created['id']}/run", headers=tokens.headers("operator"))
    latest = answer.json()["recent"][0]
    assert latest["outcome"] == "failed" and "no host" in latest["reason"], latest


def test_a_template_stored_over_the_day_bound_fails_its_slot_saying_why(
    client: TestClient, tokens: Tokens, role: str, sessions: sessionmaker[Session]
) -> None:
    """Stored before the API's duration bound became the agents' (a day): the slot fails with
    the reason instead of the scheduler raising."""
    created = make(client, tokens, role)
    with sessions() as session:
        row = session.get(Schedule, created["id"])
        assert row is not None
        row.template = {**row.template, "duration_s": 2 * 86400.0}
        session.commit()
    answer = client.post(f"/v1/schedules/{created['id']}/run", headers=tokens.headers("operator"))
    assert answer.status_code == 200, answer.text
    latest = answer.json()["recent"][0]
    assert latest["outcome"] == "failed", latest
    assert "duration_s" in latest["reason"] and "no longer validates" in latest["reason"], latest


def test_scheduler_overlap_and_misfire(
    settings: Settings,
    sessions: sessionmaker[Session],
    client: TestClient,
    tokens: Tokens,
    role: str,
) -> None:
    created = make(client, tokens, role, misfire_grace_s=10)
    start = parse(created["next_fire_at"])
    clock = FakeClock(start)
    scheduler = Scheduler(settings, sessions, CountingDispatcher(), clock=clock)
    assert scheduler.step() >= 1
    clock.now = start + timedelta(seconds=61)  # job 1 still pending: overlap
    scheduler.step()
    outcomes = [f.outcome for f in fires(sessions, created["id"])]
    assert outcomes == ["fired", "skipped_overlap"]
    job_id = fires(sessions, created["id"])[0].job_id
    answer = client.post(f"/v1/jobs/{job_id}/cancel", headers=tokens.headers("operator"))
    assert answer.json()["state"] == "cancelled"
    clock.now = start + timedelta(seconds=5 * 60 + 3)  # down through slots 2..4
    scheduler.step()
    rows = fires(sessions, created["id"])
    assert [f.outcome for f in rows] == [
        "fired",
        "skipped_overlap",
        "skipped_misfire",
        "skipped_misfire",
        "skipped_misfire",
        "fired",
    ]
    assert [int((f.slot - start).total_seconds()) for f in rows] == [0, 60, 120, 180, 240, 300]
    shown = client.get(f"/v1/schedules/{created['id']}", headers=tokens.headers("viewer")).json()
    assert parse(shown["next_fire_at"]) == start + timedelta(seconds=360)
    assert shown["recent"][0]["outcome"] == "fired" and shown["recent"][0]["job_state"] == "pending"


def test_two_schedulers_racing_fire_each_slot_once(
    settings: Settings,
    sessions: sessionmaker[Session],
    new_schedule: Callable[..., dict[str, Any]],
) -> None:
    created = new_schedule(interval_s=1, allow_overlap=True, misfire_grace_s=5)
    start = parse(created["next_fire_at"])
    clock = FakeClock(start)
    dispatcher = CountingDispatcher()
    engines = [make_engine(settings.database_url) for _ in range(2)]
    schedulers = [
        Scheduler(settings, make_sessionmaker(e), dispatcher, clock=clock) for e in engines
    ]
    rounds = 8
    barrier = threading.Barrier(3, timeout=30)
    claimed = [0, 0]
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            for _ in range(rounds):
                barrier.wait()  # both step on the same tick at once
                claimed[index] += schedulers[index].step()
                barrier.wait()
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        for tick in range(rounds):
            clock.now = start + timedelta(seconds=tick, milliseconds=100)
            barrier.wait()
            barrier.wait()
    finally:
        for t in threads:
            t.join(timeout=30)
        for e in engines:
            e.dispose()
    assert errors == []
    rows = fires(sessions, created["id"])
    slots = [f.slot for f in rows]
    assert len(slots) == len(set(slots)) == rounds, rows
    assert [f.outcome for f in rows] == ["fired"] * rounds
    assert sum(claimed) >= rounds  # other schedules of the module may be due as well
    with sessions() as session:
        made = set(
            session.scalars(select(Job.id).where(Job.created_by == f"schedule:{created['name']}"))
        )
    # The slot records are unique anyway: a double fire shows as an extra job and extra sends.
    assert made == {f.job_id for f in rows}
    assert {r.job_id for _, r in dispatcher.sent} == made


# -- retention ------------------------------------------------------------------------------------


def _add_snapshots(sessions: sessionmaker[Session], job_id: str) -> None:
    with sessions() as session:
        for run in session.scalars(select(Run).where(Run.job_id == job_id)):
            digests.put(session, run_id=run.id, job_id=job_id, seq=1, results=[])
            for seq in range(2):
                session.add(snapshot_row(run, seq, final=seq == 1))
        session.commit()


def _left(sessions: sessionmaker[Session], job_ids: list[str]) -> dict[str, tuple[int, ...]]:
    with sessions() as session:
        counts = {}
        for job_id in job_ids:
            rows = [
                len(session.scalars(select(model.job_id).where(model.job_id == job_id)).all())
                for model in (Run, SnapshotRow, JobEvent, RunDigestRow)
            ]
            counts[job_id] = (*rows, int(session.get(Job, job_id) is not None))
    return counts


def test_retention_by_count_prunes_old_jobs_and_their_snapshots(
    client: TestClient, tokens: Tokens, role: str, sessions: sessionmaker[Session]
) -> None:
    created = make(client, tokens, role, retention={"max_runs": 2})
    headers = tokens.headers("operator")
    jobs: list[str] = []
    had: dict[str, tuple[int, ...]] = {}
    for _ in range(4):
        answer = client.post(f"/v1/schedules/{created['id']}/run", headers=headers)
        job_id = answer.json()["recent"][0]["job_id"]
        _add_snapshots(sessions, job_id)
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=headers).status_code == 200
        had.update(_left(sessions, [job_id]))
        jobs.append(job_id)
    assert all(c[1] == 2 * c[0] > 0 and c[3] == c[0] and c[4] == 1 for c in had.values()), had
    gone = (0, 0, 0, 0, 0)
    # Each fire prunes the finished jobs beyond the newest two: jobs 1 and 2 went already.
    after = _left(sessions, jobs)
    assert [after[j] == gone for j in jobs] == [True, True, False, False], after
    assert after[jobs[3]] == had[jobs[3]]
    assert client.get(f"/v1/jobs/{jobs[0]}", headers=headers).status_code == 404
    fifth = client.post(f"/v1/schedules/{created['id']}/run", headers=headers).json()
    after = _left(sessions, jobs)
    assert [after[j] == gone for j in jobs] == [True, True, True, False], after
    kept = [f["job_id"] for f in fifth["recent"] if f["job_id"]]
    assert kept == [fifth["recent"][0]["job_id"], jobs[3]]
    # The slots of pruned jobs stay on record, without their job.
    assert len(fifth["recent"]) == 5


def test_retention_by_age_keeps_unfinished_jobs(
    client: TestClient, tokens: Tokens, role: str, sessions: sessionmaker[Session]
) -> None:
    created = make(client, tokens, role, retention={"max_age_s": 3600})
    headers = tokens.headers("operator")
    old_done, old_running = (
        client.post(f"/v1/schedules/{created['id']}/run", headers=headers).json()["recent"][0][
            "job_id"
        ]
        for _ in range(2)
    )
    client.post(f"/v1/jobs/{old_done}/cancel", headers=headers)
    _add_snapshots(sessions, old_done)
    with sessions() as session:
        past = datetime.now(parse(created["created_at"]).tzinfo) - timedelta(hours=2)
        session.execute(
            update(Job).where(Job.id.in_([old_done, old_running])).values(created_at=past)
        )
        session.commit()
        schedule = session.get(Schedule, created["id"])
        assert schedule is not None
        pruned = retention.prune(session=session, schedule=schedule)
    assert pruned == [old_done]
    left = _left(sessions, [old_done, old_running])
    assert left[old_done] == (0, 0, 0, 0, 0) and left[old_running][4] == 1


# -- trend ----------------------------------------------------------------------------------------


def _put_results(
    sessions: sessionmaker[Session], job_id: str, results_of: dict[str, list[Any]]
) -> None:
    with sessions() as session:
        for run in session.scalars(select(Run).where(Run.job_id == job_id)):
            results = [r.model_dump(mode="json") for r in results_of[run.host_name]]
            session.add(snapshot_row(run, interval=(0.0, 2.0), results=results))
        session.commit()


def test_trend_gives_one_series_per_host_over_the_runs(
    client: TestClient, tokens: Tokens, sessions: sessionmaker[Session]
) -> None:
    from node_agent.protocol import Log2Histogram
    from tests.controller.support import counters

    hosts, created = two_host_schedule(client, tokens, "trend")
    url = f"/v1/schedules/{created['id']}"
    headers = tokens.headers("operator")
    for run in range(3):
        job_id = client.post(f"{url}/run", headers=headers).json()["recent"][0]["job_id"]
        # Host a: 100 events in slot 4 ([8, 15]) plus run*10 in slot 10 ([512, 1023]).
        results: dict[str, list[Any]] = {
            hosts[0]: [
                Log2Histogram(name="lat", unit="us", buckets=[(4, 100), (10, 10 * run)]),
                counters("syscalls", {"read": 10 * (run + 1), "write": 2}),
            ],
            hosts[1]: [counters("syscalls", {"read": 1})],
        }
        _put_results(sessions, job_id, results)
    viewer = tokens.headers("viewer")

    def series(metric: str) -> dict[str, list[float | None]]:
        answer = client.get(f"{url}/trend", params={"metric": metric}, headers=viewer)
        assert answer.status_code == 200, answer.text
        return {s["host"]: [p["value"] for p in s["points"]] for s in answer.json()["series"]}

    assert series("p99:lat") == {hosts[0]: [15, 1023, 1023], hosts[1]: [None, None, None]}
    assert series("p50:lat") == {hosts[0]: [15, 15, 15], hosts[1]: [None, None, None]}
    assert series("count:lat")[hosts[0]] == [100, 110, 120]
    assert series("total:syscalls") == {hosts[0]: [12, 22, 32], hosts[1]: [1, 1, 1]}
    assert series("rate:syscalls")[hosts[0]] == [6, 11, 16]
    assert series("key:syscalls:read") == {hosts[0]: [10, 20, 30], hosts[1]: [1, 1, 1]}
    answer = client.get(f"{url}/trend", params={"metric": "median of lat"}, headers=viewer)
    assert answer.status_code == 422 and field_paths(answer) == ["query.metric"], answer.text
