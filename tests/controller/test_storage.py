"""Storage on SQLite and PostgreSQL: migrations, idempotent ingest, run and job states, merges.

Events go through the real Redis stream into a real Ingest; jobs are made through the API.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, inspect, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from controller.jobs.models import JobEvent, Run, SnapshotRow
from controller.migrate import alembic_config, upgrade
from controller.settings import Settings
from node_agent.protocol import (
    Feature,
    FoldedStacks,
    KeyValue,
    Log2Histogram,
    Result,
    StackCount,
)
from node_agent.wire import events_stream
from tests.controller.conftest import Feeder, RecordingDispatcher, Tokens
from tests.controller.support import (
    capabilities,
    counters,
    envelope,
    get_job,
    heartbeat,
    register_host,
    runs_by_host,
    snapshot,
    state,
    submit,
)


@pytest.fixture(scope="module")
def database_url(db_url: str) -> str:
    return db_url


def _hosts(client: TestClient, tokens: Tokens, n: int) -> list[str]:
    names = [f"h{uuid.uuid4().hex[:8]}-{i}" for i in range(n)]
    for name in names:
        register_host(client, tokens.headers("admin"), name)
    return names


def _job(client: TestClient, tokens: Tokens, hosts: list[str], **job: Any) -> dict[str, Any]:
    return submit(client, tokens.headers("operator"), targets={"hosts": hosts}, **job)


OneRun = tuple[str, dict[str, Any], str]  # (host, job, run id)


@pytest.fixture
def one_run(client: TestClient, tokens: Tokens) -> OneRun:
    """A job on one new host: its host, the job as the API shows it, its run's id."""
    (host,) = _hosts(client, tokens, 1)
    job = _job(client, tokens, [host])
    return host, job, job["runs"][0]["id"]


def _events(sessions: sessionmaker[Session], job_id: str) -> list[JobEvent]:
    with sessions() as session:
        return list(
            session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        )


def _snapshot_rows(sessions: sessionmaker[Session], run_id: str) -> list[SnapshotRow]:
    with sessions() as session:
        return list(
            session.scalars(
                select(SnapshotRow).where(SnapshotRow.run_id == run_id).order_by(SnapshotRow.seq)
            )
        )


# -- migrations -----------------------------------------------------------------------------------


def test_migrations_build_the_schema_and_a_second_run_changes_nothing(
    settings: Settings, engine: Engine
) -> None:
    tables = set(inspect(engine).get_table_names())
    expected = {"alembic_version", "api_tokens", "hosts", "jobs", "runs", "snapshots"}
    assert expected | {"job_events"} <= tables
    head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
    upgrade(settings.database_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
    unique = {tuple(u["column_names"]) for u in inspect(engine).get_unique_constraints("snapshots")}
    assert ("run_id", "seq") in unique


# -- ingest ---------------------------------------------------------------------------------------


def test_the_same_snapshot_twice_is_stored_once(
    one_run: OneRun,
    sessions: sessionmaker[Session],
    feeder: Feeder,
) -> None:
    host, job, run_id = one_run
    snap = snapshot(run_id, 0, [counters("syscalls", {"read": 3})])
    feeder(host, state(run_id, "running"), snap, snap, job_id=job["id"])
    feeder(host, snap, job_id=job["id"])
    rows = _snapshot_rows(sessions, run_id)
    assert [(r.seq, r.results[0]["rows"]) for r in rows] == [(0, [[["read"], [3]]])]
    kinds = [e.kind for e in _events(sessions, job["id"])]
    assert kinds.count("snapshot") == 1
    assert feeder.pending() == 0


def test_entries_stored_but_not_acked_before_a_crash_are_not_stored_twice(
    one_run: OneRun, sessions: sessionmaker[Session], redis_client: redis.Redis, feeder: Feeder
) -> None:
    host, job, run_id = one_run
    for seq in range(3):
        data = envelope(host, snapshot(run_id, seq, [counters("c", {"x": seq})]), job["id"])
        redis_client.xadd(events_stream(host), {"data": data})
    # The first consumer reads and commits, then dies before its XACK.
    crashed = feeder.another()
    entries = crashed._read(block_ms=100)
    assert len(entries) == 3
    crashed._store(entries)
    assert feeder.pending() == 3
    # Its successor (same consumer name) re-reads its pending entries first.
    feeder.drain()
    assert feeder.pending() == 0
    assert [r.seq for r in _snapshot_rows(sessions, run_id)] == [0, 1, 2]
    kinds = [e.kind for e in _events(sessions, job["id"])]
    assert kinds.count("snapshot") == 3


def test_trim_drops_only_acked_entries(
    one_run: OneRun, redis_client: redis.Redis, feeder: Feeder
) -> None:
    host, job, run_id = one_run
    stream = events_stream(host)

    def add(seq: int) -> bytes:
        data = envelope(host, snapshot(run_id, seq, [counters("c", {"x": seq})]), job["id"])
        entry_id: bytes = redis_client.xadd(stream, {"data": data})
        return entry_id

    acked = [add(seq) for seq in range(3)]
    feeder.drain()  # stored and acked
    # Read by a consumer that dies before its ack, then one nobody has read yet.
    pending = add(3)
    crashed = feeder.another("ingest-dead")
    assert [e[1] for e in crashed._read(block_ms=100)] == [pending]
    unread = add(4)
    assert feeder.ingest.trim(keep_s=0) >= len(acked)  # and what earlier tests left acked
    left = [entry_id for entry_id, _ in redis_client.xrange(stream)]
    assert left == [pending, unread]
    assert feeder.ingest.trim(keep_s=0) == 0


def test_an_event_from_another_host_for_a_run_is_ignored(
    client: TestClient, tokens: Tokens, sessions: sessionmaker[Session], feeder: Feeder
) -> None:
    mine, other = _hosts(client, tokens, 2)
    job = _job(client, tokens, [mine])
    run_id = job["runs"][0]["id"]
    feeder(other, state(run_id, "running"), snapshot(run_id, 0), job_id=job["id"])
    assert _snapshot_rows(sessions, run_id) == []
    assert get_job(client, tokens.headers("viewer"), job["id"])["runs"][0]["state"] == "pending"


# -- states ---------------------------------------------------------------------------------------


def test_final_run_states_stick(
    one_run: OneRun,
    client: TestClient,
    tokens: Tokens,
    sessions: sessionmaker[Session],
    feeder: Feeder,
) -> None:
    host, job, run_id = one_run
    feeder(host, state(run_id, "running"), state(run_id, "succeeded"), job_id=job["id"])
    feeder(host, state(run_id, "failed"), state(run_id, "running"), job_id=job["id"])
    shown = get_job(client, tokens.headers("viewer"), job["id"])
    assert (shown["state"], shown["runs"][0]["state"]) == ("succeeded", "succeeded")
    run_states = [e.payload["state"] for e in _events(sessions, job["id"]) if e.kind == "state"]
    assert run_states == ["pending", "running", "succeeded"]
    # Cancelling a finished job changes nothing either.
    answer = client.post(f"/v1/jobs/{job['id']}/cancel", headers=tokens.headers("operator"))
    assert answer.status_code == 200, answer.text
    assert get_job(client, tokens.headers("viewer"), job["id"])["state"] == "succeeded"


def test_expired_runs_are_overridden_by_the_hosts_real_events(
    client: TestClient, tokens: Tokens, sessions: sessionmaker[Session], feeder: Feeder
) -> None:
    late, fresh = _hosts(client, tokens, 2)
    job = _job(client, tokens, [late, fresh])
    runs = runs_by_host(job)
    with sessions() as session:
        session.execute(
            update(Run).where(Run.id == runs[late]["id"]).values(expires_at=Run.created_at)
        )
        session.commit()
    assert feeder.ingest.sweep() == 1
    assert feeder.ingest.sweep() == 0
    viewer = tokens.headers("viewer")
    shown = runs_by_host(get_job(client, viewer, job["id"]))
    assert (shown[late]["state"], shown[fresh]["state"]) == ("expired", "pending")
    assert "expired" in (shown[late]["reason"] or "")
    fresh_id = runs[fresh]["id"]
    feeder(fresh, state(fresh_id, "running"), state(fresh_id, "succeeded"), job_id=job["id"])
    partial = get_job(client, viewer, job["id"])
    assert (partial["state"], partial["finished_at"] is not None) == ("partial", True)
    # The host did start it after all: its own events win over the controller's guess.
    run_id = runs[late]["id"]
    feeder(late, state(run_id, "running"), job_id=job["id"])
    reopened = get_job(client, viewer, job["id"])
    assert (reopened["state"], reopened["finished_at"]) == ("running", None)
    feeder(late, snapshot(run_id, 0, final=True), state(run_id, "succeeded"), job_id=job["id"])
    shown_job = get_job(client, viewer, job["id"])
    assert shown_job["state"] == "succeeded"
    assert shown_job["finished_at"] is not None
    assert shown_job["counts"] == {"succeeded": 2}
    assert runs_by_host(shown_job)[late]["snapshots"] == 1


def test_a_run_the_host_accepted_does_not_expire_while_it_compiles(
    one_run: OneRun,
    sessions: sessionmaker[Session],
    feeder: Feeder,
) -> None:
    host, job, run_id = one_run
    feeder(host, state(run_id, "pending", reason="accepted"), job_id=job["id"])
    with sessions() as session:
        run = session.get(Run, run_id)
        assert run is not None and run.expires_at is None and run.state == "pending"
    assert feeder.ingest.sweep() == 0
    run_states = [e.payload["state"] for e in _events(sessions, job["id"]) if e.kind == "state"]
    assert run_states == ["pending"]


@pytest.mark.parametrize(
    ("finals", "expected"),
    [
        (("succeeded", "succeeded"), "succeeded"),
        (("succeeded", "failed"), "partial"),
        (("succeeded", "timed_out"), "partial"),
        (("failed", "timed_out"), "failed"),
        (("cancelled", "failed"), "failed"),
    ],
)
def test_job_state_follows_its_runs(
    client: TestClient,
    tokens: Tokens,
    feeder: Feeder,
    finals: tuple[str, str],
    expected: str,
) -> None:
    hosts = _hosts(client, tokens, 2)
    job = _job(client, tokens, hosts)
    runs = runs_by_host(job)
    viewer = tokens.headers("viewer")
    for host in hosts:
        feeder(host, state(runs[host]["id"], "running"), job_id=job["id"])
    assert get_job(client, viewer, job["id"])["state"] == "running"
    feeder(hosts[0], state(runs[hosts[0]]["id"], finals[0]), job_id=job["id"])
    assert get_job(client, viewer, job["id"])["state"] == "running"
    feeder(hosts[1], state(runs[hosts[1]]["id"], finals[1]), job_id=job["id"])
    shown = get_job(client, viewer, job["id"])
    assert shown["state"] == expected
    assert shown["finished_at"] is not None


def test_a_host_lacking_a_needed_feature_gets_an_unsupported_run_and_no_task(
    client: TestClient,
    tokens: Tokens,
    feeder: Feeder,
    dispatcher: RecordingDispatcher,
) -> None:
    # One host reports per-program support; the other only its features (an older agent).
    detailed, terse, able = _hosts(client, tokens, 3)
    feeder(detailed, heartbeat(detailed, capabilities(without=[Feature.perf_events])))
    feeder(terse, heartbeat(terse, capabilities(without=[Feature.perf_events], programs=False)))
    feeder(able, heartbeat(able, capabilities()))
    sent_before = len(dispatcher.sent)
    job = _job(client, tokens, [detailed, terse, able], program="cpu_profile")
    runs = runs_by_host(job)
    for host in (detailed, terse):
        assert runs[host]["state"] == "unsupported", host
        assert "perf_events" in runs[host]["reason"]
    assert runs[able]["state"] == "pending"
    assert [host for host, _ in dispatcher.sent[sent_before:]] == [able]


# -- results --------------------------------------------------------------------------------------


def _hist(labels: dict[str, KeyValue], buckets: list[tuple[int, int]]) -> Log2Histogram:
    return Log2Histogram(name="latency", unit="usecs", labels=labels, buckets=buckets)


def _stacks(counts: dict[str, int]) -> FoldedStacks:
    stacks = [StackCount(frames=f.split(";"), count=c) for f, c in counts.items()]
    return FoldedStacks(name="cpu", stacks=stacks, total_rows=len(stacks))


def test_results_merge_counters_histograms_and_stacks_across_hosts(
    client: TestClient, tokens: Tokens, feeder: Feeder
) -> None:
    a, b = _hosts(client, tokens, 2)
    job = _job(client, tokens, [a, b])
    runs = runs_by_host(job)
    results_a: list[Result] = [
        counters("syscalls", {"read": 5, "write": 2}),
        _hist({"disk": "sda"}, [(1, 2), (3, 4)]),
        _hist({"disk": "sdb"}, [(2, 1)]),
        _stacks({"main;f": 3, "main;g": 1}),
    ]
    results_b: list[Result] = [
        counters("syscalls", {"read": 3, "open": 7}),
        _hist({"disk": "sda"}, [(3, 1), (5, 6)]),
        _stacks({"main;f": 2, "main;h;i": 4}),
    ]
    for host, results in ((a, results_a), (b, results_b)):
        run_id = runs[host]["id"]
        feeder(host, state(run_id, "running"), job_id=job["id"])
        feeder(host, snapshot(run_id, 0, results, final=True), job_id=job["id"])
        feeder(host, state(run_id, "succeeded"), job_id=job["id"])
    answer = client.get(f"/v1/jobs/{job['id']}/results", headers=tokens.headers("viewer"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["state"] == "succeeded"
    merged = {(r["kind"], r["name"], str(r.get("labels", ""))): r for r in body["merged"]}
    table = merged[("counter_table", "syscalls", "")]
    assert table["rows"] == [[["read"], [8]], [["open"], [7]], [["write"], [2]]]
    assert table["total_rows"] == 3
    sda = merged[("log2_histogram", "latency", str({"disk": "sda"}))]
    assert sda["buckets"] == [[1, 2], [3, 5], [5, 6]]
    sdb = merged[("log2_histogram", "latency", str({"disk": "sdb"}))]
    assert sdb["buckets"] == [[2, 1]]
    stacks = merged[("folded_stacks", "cpu", "")]
    assert [(s["frames"], s["count"]) for s in stacks["stacks"]] == [
        (["main", "f"], 5),
        (["main", "h", "i"], 4),
        (["main", "g"], 1),
    ]
    assert len(body["merged"]) == 4
    per_host = {h["host"]: h for h in body["hosts"]}
    assert per_host[a]["results"][0]["rows"] == [[["read"], [5]], [["write"], [2]]]
    assert per_host[b]["results"][0]["rows"] == [[["open"], [7]], [["read"], [3]]]


def test_results_show_each_hosts_latest_cumulative_snapshot(
    client: TestClient, tokens: Tokens, sessions: sessionmaker[Session], feeder: Feeder
) -> None:
    a, b, silent = _hosts(client, tokens, 3)
    job = _job(client, tokens, [a, b, silent])
    runs = runs_by_host(job)
    ra, rb = runs[a]["id"], runs[b]["id"]
    feeder(a, state(ra, "running"), job_id=job["id"])
    # Snapshots are cumulative; a late redelivery of an older one must not win.
    feeder(a, snapshot(ra, 1, [counters("c", {"x": 5})]), job_id=job["id"])
    feeder(a, snapshot(ra, 0, [counters("c", {"x": 1})]), job_id=job["id"])
    feeder(b, snapshot(rb, 0, [counters("c", {"x": 10, "y": 1})]), job_id=job["id"])
    body = client.get(f"/v1/jobs/{job['id']}/results", headers=tokens.headers("viewer")).json()
    per_host = {h["host"]: h for h in body["hosts"]}
    assert (per_host[a]["seq"], per_host[a]["results"][0]["rows"]) == (1, [[["x"], [5]]])
    assert per_host[b]["seq"] == 0
    assert (per_host[silent]["seq"], per_host[silent]["results"]) == (None, [])
    assert body["merged"][0]["rows"] == [[["x"], [15]], [["y"], [1]]]
    with sessions() as session:
        assert session.scalar(select(Run.last_seq).where(Run.id == ra)) == 1
        count = session.scalar(select(func.count()).where(SnapshotRow.job_id == job["id"]))
        assert count == 3
