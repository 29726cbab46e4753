"""Two controllers' writers at once on PostgreSQL: the second waits for the first's row locks
and decides on what it committed. Two sweeps end a lapsed run once (one final state, one job
event); two ingest batches ending the two runs of one job leave it succeeded, not running.

Each case holds the first transaction open while the second runs in a thread, so the overlap
is certain rather than left to timing. And a heartbeat one controller read and died with,
claimed by the other later, ends no run the agent started meanwhile; a cancel racing a run's
final state ends the job once.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Executable, select, update
from sqlalchemy.orm import Session, sessionmaker

from controller.db import utcnow
from controller.hosts.models import Host
from controller.ingest.consumer import Ingest
from controller.ingest.leases import TRACE_GRACE_S
from controller.jobs import locks
from controller.jobs import service as jobs_service
from controller.jobs.models import Job, JobEvent, Run
from controller.settings import Settings
from node_agent.protocol import Heartbeat, StreamEnvelope
from node_agent.wire import events_stream
from tests.controller.conftest import PostgresServer, RecordingDispatcher, Tokens
from tests.controller.support import register_host, state, submit

SLACK_S = 5.0
DURATION_S = 30.0


@pytest.fixture(scope="module")
def database_url(postgres_server: PostgresServer) -> str:
    return postgres_server.new_database()


@pytest.fixture(scope="module")
def settings_overrides() -> dict[str, Any]:
    return {"lease_slack_s": SLACK_S}


@pytest.fixture
def ingests(
    settings: Settings, sessions: sessionmaker[Session], redis_client: redis.Redis
) -> tuple[Ingest, Ingest]:
    """Two controllers' ingests (their lease memories apart), hearing Redis from now on."""
    pair = (Ingest(settings, sessions, redis_client), Ingest(settings, sessions, redis_client))
    for ingest in pair:
        ingest.link.up()
    return pair


StartJob = Callable[[Ingest, int], tuple[str, dict[str, str]]]


@pytest.fixture
def start_job(client: TestClient, tokens: Tokens, sessions: sessionmaker[Session]) -> StartJob:
    """Factory: running_job(ingest, hosts) on this test's client, tokens and database."""

    def start(ingest: Ingest, hosts: int) -> tuple[str, dict[str, str]]:
        return running_job(client, tokens, ingest, sessions, hosts)

    return start


def commit(sessions: sessionmaker[Session], statement: Executable) -> None:
    """Runs one statement in a transaction of its own."""
    with sessions() as session:
        session.execute(statement)
        session.commit()


def running_job(
    client: TestClient, tokens: Tokens, ingest: Ingest, sessions: sessionmaker[Session], hosts: int
) -> tuple[str, dict[str, str]]:
    """A job whose runs all run: (job id, host -> run id)."""
    names = [f"duo-{uuid.uuid4().hex[:8]}" for _ in range(hosts)]
    for name in names:
        register_host(client, tokens.headers("admin"), name)
    with sessions() as session:
        beats = [Heartbeat(host=name, agent_version="t") for name in names]
        ingest.apply(session, [StreamEnvelope(host=b.host, event=b) for b in beats])
        session.commit()
    job = submit(
        client, tokens.headers("operator"), targets={"hosts": names}, duration_s=DURATION_S
    )
    runs = {run["host"]: run["id"] for run in job["runs"]}
    with sessions() as session:
        for host, run_id in runs.items():
            envelope = StreamEnvelope(host=host, job_id=job["id"], event=state(run_id, "running"))
            ingest.apply(session, [envelope])
        session.commit()
    return job["id"], runs


def overlap(
    sessions: sessionmaker[Session],
    first: Callable[[Session], Any],
    second: Callable[[Session], Any],
) -> None:
    """`first` in an open transaction; `second` in a thread meanwhile, which must wait for the
    first's commit (a row lock) before it can commit its own."""
    errors: list[BaseException] = []
    done = threading.Event()

    def other() -> None:
        try:
            with sessions() as session:
                second(session)
                session.commit()
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)
        finally:
            done.set()

    with sessions() as session:
        first(session)
        thread = threading.Thread(target=other)
        thread.start()
        assert not done.wait(1.0), f"the second writer did not wait for the first: {errors}"
        session.commit()
    thread.join(timeout=30)
    assert not thread.is_alive() and not errors, errors


def events(sessions: sessionmaker[Session], job_id: str, kind: str) -> list[dict[str, Any]]:
    with sessions() as session:
        return list(
            session.scalars(
                select(JobEvent.payload).where(JobEvent.job_id == job_id, JobEvent.kind == kind)
            )
        )


def test_two_sweeps_end_a_lapsed_run_once(
    sessions: sessionmaker[Session], ingests: tuple[Ingest, Ingest], start_job: StartJob
) -> None:
    a, b = ingests
    job_id, runs = start_job(a, 1)
    (run_id,) = runs.values()
    # As if it had started past duration + grace + slack ago.
    started = utcnow() - timedelta(seconds=DURATION_S + TRACE_GRACE_S + SLACK_S + 1)
    commit(sessions, update(Run).where(Run.id == run_id).values(started_at=started))
    since = utcnow()

    overlap(
        sessions,
        lambda s: a.leases.sweep(s, hearing_since=since),
        lambda s: b.leases.sweep(s, hearing_since=since),
    )

    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == "failed"
    states = [event["state"] for event in events(sessions, job_id, "state")]
    assert states.count("failed") == 1, states
    assert events(sessions, job_id, "job") == [{"state": "failed"}]


def test_two_batches_ending_one_jobs_runs_at_once_end_the_job_once(
    sessions: sessionmaker[Session], ingests: tuple[Ingest, Ingest], start_job: StartJob
) -> None:
    a, b = ingests
    job_id, runs = start_job(a, 2)
    (one, first_run), (two, second_run) = sorted(runs.items())

    def ended(ingest: Ingest, host: str, run_id: str) -> Callable[[Session], None]:
        envelope = StreamEnvelope(host=host, job_id=job_id, event=state(run_id, "succeeded"))
        return lambda session: ingest.apply(session, [envelope])

    overlap(sessions, ended(a, one, first_run), ended(b, two, second_run))

    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.finished_at is not None
        assert job.state == "succeeded"  # each batch alone saw one run still running
    assert events(sessions, job_id, "job") == [{"state": "succeeded"}]


@dataclass
class Lapsed:
    """A running job on one host whose run started well past the grace for runs a beat leaves
    out, and the host's stream as the second controller's ingest (`b`) reads it."""

    settings: Settings
    sessions: sessionmaker[Session]
    redis: redis.Redis
    b: Ingest
    job_id: str
    host: str
    run_id: str

    @property
    def stream(self) -> str:
        return events_stream(self.host)

    def send(self, event: Any, *, job: bool = True) -> None:
        entry = StreamEnvelope(host=self.host, job_id=self.job_id if job else None, event=event)
        self.redis.xadd(self.stream, {"data": entry.model_dump_json()})

    def read_and_die(self) -> None:
        """A controller reads what is pending and dies before storing it."""
        group = self.settings.ingest_group
        assert self.redis.xreadgroup(group, "died", {self.stream: ">"}, count=10)

    def idle(self) -> None:
        """Long enough for the other controller to claim what the dead one read."""
        threading.Event().wait(self.settings.ingest_claim_idle_ms / 1000 + 0.2)

    def pending(self) -> int:
        return int(self.redis.xpending(self.stream, self.settings.ingest_group)["pending"])

    def run_state(self) -> str:
        with self.sessions() as session:
            run = session.get(Run, self.run_id)
            assert run is not None
            return run.state


@pytest.fixture
def lapsed(ingests: tuple[Ingest, Ingest], start_job: StartJob) -> Lapsed:
    a, b = ingests
    job_id, runs = start_job(a, 1)
    ((host, run_id),) = runs.items()
    started = utcnow() - timedelta(seconds=b.settings.lease_unlisted_grace_s + 5)
    commit(b.sessions, update(Run).where(Run.id == run_id).values(started_at=started))
    b.ensure_group()
    return Lapsed(b.settings, b.sessions, b.redis, b, job_id, host, run_id)


def test_a_claimed_heartbeat_is_old_news_and_ends_no_run(lapsed: Lapsed) -> None:
    # Listing no run: sent before the run started, or by a restarted agent.
    lapsed.send(Heartbeat(host=lapsed.host, agent_version="t"), job=False)
    # Read by a controller that died before storing it; the other claims it once idle.
    lapsed.read_and_die()
    lapsed.idle()
    claimed = 0
    for _ in range(5):
        claimed += lapsed.b.step(block_ms=100)
    assert claimed == 1
    assert lapsed.pending() == 0
    assert lapsed.run_state() == "running"
    # The same news fresh: the agent no longer has the run.
    lapsed.send(Heartbeat(host=lapsed.host, agent_version="t"), job=False)
    for _ in range(5):
        lapsed.b.step(block_ms=100)
    assert lapsed.run_state() == "failed"
    assert events(lapsed.sessions, lapsed.job_id, "job") == [{"state": "failed"}]


def test_a_cancel_racing_a_final_state_ends_the_job_once(
    settings: Settings,
    sessions: sessionmaker[Session],
    dispatcher: RecordingDispatcher,
    ingests: tuple[Ingest, Ingest],
    start_job: StartJob,
) -> None:
    a, _ = ingests
    job_id, runs = start_job(a, 1)
    ((host, run_id),) = runs.items()
    # The host looks away: cancel would end the run itself.
    silent = utcnow() - timedelta(seconds=settings.heartbeat_timeout_s + 1)
    commit(sessions, update(Host).where(Host.name == host).values(last_heartbeat=silent))
    envelope = StreamEnvelope(host=host, job_id=job_id, event=state(run_id, "succeeded"))

    def cancel(session: Session) -> None:
        job = jobs_service.get(session=session, job_id=job_id)
        assert job is not None
        jobs_service.cancel(
            session=session,
            dispatcher=dispatcher,
            job=locks.lock_job(session, job),  # as the route does
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
        )

    overlap(sessions, lambda session: a.apply(session, [envelope]), cancel)

    states = [event["state"] for event in events(sessions, job_id, "state")]
    assert states == ["pending", "running", "succeeded"], states
    assert events(sessions, job_id, "job") == [{"state": "succeeded"}]


def test_a_dead_consumers_backlog_is_claimed_batch_after_batch(
    client: TestClient, tokens: Tokens, redis_client: redis.Redis, ingests: tuple[Ingest, Ingest]
) -> None:
    _, b = ingests
    host = f"duo-{uuid.uuid4().hex[:8]}"
    register_host(client, tokens.headers("admin"), host)
    b.ensure_group()
    stream = events_stream(host)
    backlog = 4 * b._per_stream()
    settings = b.settings
    for _ in range(backlog):
        beat = StreamEnvelope(host=host, event=Heartbeat(host=host, agent_version="t"))
        redis_client.xadd(stream, {"data": beat.model_dump_json()})
    read = redis_client.xreadgroup(settings.ingest_group, "died", {stream: ">"}, count=backlog)
    assert len(read[0][1]) == backlog
    threading.Event().wait(settings.ingest_claim_idle_ms / 1000 + 0.2)
    # Claims follow each other while the last one was full, not one per claim period.
    for _ in range(6):
        b.step(block_ms=10)
    assert redis_client.xpending(stream, settings.ingest_group)["pending"] == 0


def test_a_final_state_held_by_a_dead_consumer_wins_over_a_later_heartbeat(
    lapsed: Lapsed,
) -> None:
    lapsed.send(state(lapsed.run_id, "succeeded"))
    # A controller read the run's end and died; the agent's next beat lists no run.
    lapsed.read_and_die()
    lapsed.send(Heartbeat(host=lapsed.host, agent_version="t"))
    lapsed.b.step(block_ms=100)
    assert lapsed.pending() == 1  # the end
    assert lapsed.run_state() == "running"  # not lost: its end is in flight
    lapsed.idle()
    for _ in range(3):
        lapsed.b.step(block_ms=100)
    assert lapsed.pending() == 0
    assert events(lapsed.sessions, lapsed.job_id, "job") == [{"state": "succeeded"}]
