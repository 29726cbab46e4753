"""Redis dies under a working controller: ingest, the sweep and the agents carry on by themselves.

The module runs its own redis-server (AOF, appendfsync everysec, as the dev stack does), which
the tests SIGKILL and start again on the same socket and data directory.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from controller.db import utcnow
from controller.jobs.models import Run, SnapshotRow
from controller.schedules.models import ScheduleFire
from controller.schedules.scheduler import Scheduler
from controller.settings import Settings
from devstack.harness import REDIS_SERVER, RedisServer
from node_agent.protocol import Heartbeat
from node_agent.wire import events_stream
from tests.controller.conftest import Agents, IngestThread, RecordingDispatcher, Tokens
from tests.controller.support import (
    envelope,
    get_job,
    job_final,
    missing,
    register_host,
    runs_by_host,
    submit,
    wait_for,
    wait_job,
)

HOSTS = ("rfault-a", "rfault-b")
OUTAGE_S = 2.0


@pytest.fixture(scope="module")
def redis_proc() -> Iterator[RedisServer]:
    """A redis-server the tests SIGKILL and start again on its socket and files: AOF on
    (appendfsync everysec), as the dev stack runs it."""
    if not REDIS_SERVER.exists():
        missing(f"{REDIS_SERVER} (apt install redis-server)")
    workdir = Path(tempfile.mkdtemp(prefix="ft-redis-aof-"))  # short: a unix socket path
    server = RedisServer(workdir, auth=False, aof=True)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_url(redis_proc: RedisServer) -> str:
    return redis_proc.url


def _ingest_lines(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(
        1
        for r in caplog.records
        if r.name.startswith("controller.ingest") and text in r.getMessage()
    )


def _beat(url: str, host: str) -> None:
    with redis.Redis.from_url(url) as client:
        beat = Heartbeat(host=host, agent_version="0.1.0")
        client.xadd(events_stream(host), {"data": envelope(host, beat)})


def _last_heartbeat(client: TestClient, tokens: Tokens, host: str) -> str | None:
    answer = client.get(f"/v1/hosts/{host}", headers=tokens.headers("viewer"))
    return answer.json()["last_heartbeat"] if answer.status_code == 200 else None


def test_ingest_makes_its_group_again_when_redis_comes_back_empty(
    redis_proc: RedisServer,
    ingest: IngestThread,
    client: TestClient,
    tokens: Tokens,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="controller.ingest")
    host = f"nogroup-{uuid.uuid4().hex[:6]}"
    register_host(client, tokens.headers("admin"), host)  # hosts join by being added
    _beat(redis_proc.url, host)
    before = wait_for(lambda: _last_heartbeat(client, tokens, host), 10, "the first beat stored")
    redis_proc.kill()
    redis_proc.wipe()  # no AOF: the stream and the consumer group are gone
    time.sleep(OUTAGE_S)
    redis_proc.start()
    _beat(redis_proc.url, host)  # the agent's XADD makes the stream again, without the group

    def stored_again() -> bool:
        last = _last_heartbeat(client, tokens, host)
        return last is not None and last > before

    wait_for(stored_again, 30, "a beat sent after the restart stored")
    with redis.Redis.from_url(redis_proc.url) as fresh:
        groups = [g["name"] for g in fresh.xinfo_groups(events_stream(host))]
    assert ingest.settings.ingest_group.encode() in groups
    # One line when Redis went, one when it came back: not one per try.
    assert _ingest_lines(caplog, "redis unavailable") == 1
    assert _ingest_lines(caplog, "redis is back") == 1
    assert ingest.running


def test_entries_delivered_in_a_reply_lost_to_the_outage_are_stored(
    redis_proc: RedisServer, ingest: IngestThread, client: TestClient, tokens: Tokens
) -> None:
    assert ingest.ingest is not None
    link = ingest.ingest.link
    host = f"lostreply-{uuid.uuid4().hex[:6]}"
    register_host(client, tokens.headers("admin"), host)
    wait_for(lambda: host in ingest.ingest.hosts, 30, "ingest reading the new host's stream")
    group = ingest.settings.ingest_group.encode()

    def group_made() -> bool:  # hearing_since may be from an earlier host's stream
        with redis.Redis.from_url(redis_proc.url) as probe:
            try:
                return group in [g["name"] for g in probe.xinfo_groups(events_stream(host))]
            except redis.ResponseError:  # no stream yet
                return False

    wait_for(group_made, 30, "ingest's group on the new host's stream")
    wait_for(lambda: link.hearing_since is not None, 30, "ingest reading")
    for _ in range(3):  # until Redis is back while ingest's next try is still a while off
        redis_proc.kill()
        wait_for(lambda: link.failures >= 5, 30, "ingest backing off")  # next try 3.2 s away
        redis_proc.start()
        if link.wait_s() > 0.5:
            break
        wait_for(lambda: link.is_up, 30, "ingest back")
    else:
        raise AssertionError("Redis never came back before ingest's next try")
    # The entry goes to ingest's consumer (as a read whose reply died with the connection).
    with redis.Redis.from_url(redis_proc.url) as other:
        beat = Heartbeat(host=host, agent_version="0.1.0")
        other.xadd(events_stream(host), {"data": envelope(host, beat)})
        assert ingest.ingest is not None
        got = other.xreadgroup(
            ingest.settings.ingest_group,
            ingest.ingest.consumer,
            {events_stream(host): ">"},
            count=100,
        )
        assert got, "nothing delivered"
    wait_for(lambda: _last_heartbeat(client, tokens, host), 30, "the delivered entry stored")


def test_the_sweep_goes_on_while_redis_is_down(
    redis_proc: RedisServer,
    ingest: IngestThread,
    client: TestClient,
    tokens: Tokens,
    sessions: sessionmaker[Session],
) -> None:
    host = f"away-{uuid.uuid4().hex[:6]}"
    register_host(client, tokens.headers("admin"), host)
    job = submit(client, tokens.headers("operator"), targets={"hosts": [host]})
    run_id = job["runs"][0]["id"]
    redis_proc.kill()
    try:
        with sessions() as session:
            past = utcnow() - timedelta(seconds=1)
            session.execute(update(Run).where(Run.id == run_id).values(expires_at=past))
            session.commit()

        def expired() -> bool:
            return get_job(client, tokens.headers("viewer"), job["id"])["state"] == "failed"

        wait_for(expired, 15, "the run to expire with Redis down")
        shown = runs_by_host(get_job(client, tokens.headers("viewer"), job["id"]))[host]
        assert shown["state"] == "expired", shown
    finally:
        redis_proc.start()
    assert ingest.running


def test_the_scheduler_goes_on_while_redis_is_down(
    redis_proc: RedisServer,
    scheduler: Scheduler,
    dispatcher: RecordingDispatcher,
    client: TestClient,
    tokens: Tokens,
    sessions: sessionmaker[Session],
) -> None:
    host = f"sched-{uuid.uuid4().hex[:6]}"
    operator = tokens.headers("operator")
    register_host(client, tokens.headers("admin"), host)
    answer = client.post(
        "/v1/schedules",
        json={
            "name": f"s-{host}",
            "interval_s": 1,
            "allow_overlap": True,
            "template": {"program": "syscalls", "duration_s": 1, "targets": {"hosts": [host]}},
        },
        headers=operator,
    )
    assert answer.status_code == 201, answer.text
    schedule_id = answer.json()["id"]

    def runs_of_fired() -> list[dict[str, Any]]:
        with sessions() as session:
            query = select(ScheduleFire.job_id).where(
                ScheduleFire.schedule_id == schedule_id, ScheduleFire.outcome == "fired"
            )
            job_ids = list(session.scalars(query.order_by(ScheduleFire.slot)))
        viewer = tokens.headers("viewer")
        return [get_job(client, viewer, job_id)["runs"][0] for job_id in job_ids if job_id]

    try:
        wait_for(runs_of_fired, 30, "a first slot fired")
        redis_proc.kill()
        try:
            # A slot fired while Redis is away makes a job whose run says why it never left.
            def unqueued() -> bool:
                return any((r["reason"] or "").startswith("not queued:") for r in runs_of_fired())

            wait_for(unqueued, 30, "a run failed as not queued")
        finally:
            redis_proc.start()
        sent = len(dispatcher.sent)

        def queued_again() -> bool:
            return runs_of_fired()[-1]["state"] in ("pending", "expired")

        wait_for(queued_again, 30, "a slot's task queued once Redis is back")
        assert len(dispatcher.sent) > sent
    finally:
        client.post(f"/v1/schedules/{schedule_id}/pause", headers=operator)


@pytest.mark.bcc
def test_a_job_survives_redis_sigkilled_mid_job_every_snapshot_once(
    redis_proc: RedisServer,
    agent: Agents,
    client: TestClient,
    tokens: Tokens,
    settings: Settings,
    sessions: sessionmaker[Session],
) -> None:
    started = [agent.start(host, wait=False) for host in HOSTS]
    for one in started:
        agent.wait_online(one)
    viewer = tokens.headers("viewer")
    job = submit(
        client,
        tokens.headers("operator"),
        duration_s=8,
        interval_s=0.5,
        targets={"hosts": list(HOSTS)},
    )

    def two_snapshots_each(job: dict[str, Any]) -> bool:
        return all(r["state"] == "running" and r["snapshots"] >= 2 for r in job["runs"])

    wait_job(client, viewer, job["id"], two_snapshots_each, 60, "runs with snapshots")
    redis_proc.kill()
    killed_at = utcnow()
    time.sleep(OUTAGE_S)
    redis_proc.start()
    done = wait_job(client, viewer, job["id"], job_final, 90, "the job to finish")
    assert done["state"] == "succeeded", done["runs"]
    with sessions() as session:
        for run in done["runs"]:
            seqs = sorted(
                session.scalars(select(SnapshotRow.seq).where(SnapshotRow.run_id == run["id"]))
            )
            finals = session.scalar(
                select(func.count())
                .select_from(SnapshotRow)
                .where(SnapshotRow.run_id == run["id"], SnapshotRow.final.is_(True))
            )
            # Every snapshot once: no seq twice, none missing, exactly one final.
            assert seqs == list(range(len(seqs))), (run["host"], seqs)
            assert len(seqs) >= 8 and finals == 1, (run["host"], seqs, finals)
            assert run["snapshots"] == len(seqs)

    def back_online() -> bool:
        for host in HOSTS:
            shown = client.get(f"/v1/hosts/{host}", headers=viewer).json()
            last = datetime.fromisoformat(shown["last_heartbeat"].replace("Z", "+00:00"))
            if shown["state"] != "online" or last <= killed_at:
                return False
        return True

    wait_for(back_online, 30, "both hosts online again")
