"""Run leases on the real database (SQLite and PostgreSQL): every run a host holds ends.

Events go straight into a real Ingest's apply() (the stream is another test's business); time
passes by moving the stored timestamps back.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from controller.db import utcnow
from controller.hosts.models import Host
from controller.ingest.consumer import Ingest
from controller.ingest.leases import TRACE_GRACE_S
from controller.jobs.models import Run
from controller.settings import Settings
from node_agent.protocol import Heartbeat, Snapshot, StateChange, StreamEnvelope
from tests.controller.conftest import RecordingDispatcher, Tokens
from tests.controller.support import (
    counters,
    get_job,
    register_host,
    snapshot,
    state,
    submit,
)

TIMEOUT_S = 5.0
GRACE_S = 2.0
SLACK_S = 5.0
DURATION_S = 30.0


@pytest.fixture(scope="module")
def database_url(db_url: str) -> str:
    return db_url


@pytest.fixture(scope="module")
def settings_overrides() -> dict[str, Any]:
    return {
        "heartbeat_timeout_s": TIMEOUT_S,
        "lease_unlisted_grace_s": GRACE_S,
        "lease_slack_s": SLACK_S,
    }


class Fleet:
    """Hosts that exist only as the events a test sends for them, into a real Ingest."""

    def __init__(
        self,
        client: TestClient,
        tokens: Tokens,
        sessions: sessionmaker[Session],
        ingest: Ingest,
    ) -> None:
        self.client = client
        self.tokens = tokens
        self.sessions = sessions
        self.ingest = ingest

    def send(self, host: str, *events: Snapshot | StateChange | Heartbeat, job: str = "") -> None:
        with self.sessions() as session:
            for event in events:  # one at a time, in order, as separate batches would be
                envelope = StreamEnvelope(host=host, job_id=job or None, event=event)
                self.ingest.apply(session, [envelope])
            session.commit()

    def beat(self, host: str, *running: str) -> None:
        self.send(host, Heartbeat(host=host, agent_version="0.1.0", running=list(running)))

    def sweep(self) -> int:
        return self.ingest.sweep()

    def job_on_new_host(self) -> tuple[str, str, str]:
        """A host that heartbeats and a job on it whose run it has started: (host, job, run)."""
        host = f"lease-{uuid.uuid4().hex[:8]}"
        register_host(self.client, self.tokens.headers("admin"), host)
        self.beat(host)
        job = submit(
            self.client,
            self.tokens.headers("operator"),
            targets={"hosts": [host]},
            duration_s=DURATION_S,
        )
        run_id = job["runs"][0]["id"]
        self.send(host, state(run_id, "pending", reason="accepted"), job=job["id"])
        self.send(host, state(run_id, "running"), job=job["id"])
        self.beat(host, run_id)
        return host, job["id"], run_id

    def age_run(self, run_id: str, seconds: float) -> None:
        """As if the run had started `seconds` earlier."""
        with self.sessions() as session:
            run = session.get(Run, run_id)
            assert run is not None and run.started_at is not None
            started = run.started_at - timedelta(seconds=seconds)
            session.execute(update(Run).where(Run.id == run_id).values(started_at=started))
            session.commit()

    def silence(self, host: str, seconds: float) -> None:
        """As if the host's last heartbeat were `seconds` old."""
        with self.sessions() as session:
            last = utcnow() - timedelta(seconds=seconds)
            session.execute(update(Host).where(Host.name == host).values(last_heartbeat=last))
            session.commit()

    def run(self, job_id: str) -> dict[str, Any]:
        shown = get_job(self.client, self.tokens.headers("viewer"), job_id)
        run: dict[str, Any] = shown["runs"][0]
        return {**run, "job_state": shown["state"]}


@pytest.fixture
def fleet(
    client: TestClient,
    tokens: Tokens,
    settings: Settings,
    sessions: sessionmaker[Session],
    redis_client: redis.Redis,
) -> Fleet:
    ingest = Ingest(settings, sessions, redis_client)
    ingest.link.up()  # ingest hears Redis from now on (hearing_since)
    return Fleet(client, tokens, sessions, ingest)


def _lost(run: dict[str, Any], why: str) -> bool:
    return (
        run["state"] == "failed"
        and run["reason"].startswith(f"lost: {why}")
        and run["error"]["code"] == "lost"
        and run["finished_at"] is not None
        and run["job_state"] == "failed"
    )


# Each case: what happens to a running run's host, and how its run must end.
Fault = Callable[[Fleet, str, str], None]


def _restarted(fleet: Fleet, host: str, run_id: str) -> None:
    fleet.age_run(run_id, GRACE_S + 1)
    fleet.beat(host)  # a restarted agent knows no run


def _silent(fleet: Fleet, host: str, run_id: str) -> None:
    fleet.silence(host, TIMEOUT_S + 1)
    fleet.ingest.link.hearing_since = utcnow() - timedelta(seconds=TIMEOUT_S + 2)
    fleet.sweep()


def _overdue(fleet: Fleet, host: str, run_id: str) -> None:
    fleet.age_run(run_id, DURATION_S + TRACE_GRACE_S + SLACK_S + 1)
    fleet.beat(host, run_id)  # alive, and still claims the run
    fleet.sweep()


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        pytest.param(_restarted, "the agent on {host} no longer has the run", id="restarted"),
        pytest.param(_silent, "the agent on {host} stopped heartbeating at", id="silent"),
        pytest.param(_overdue, "no final snapshot by", id="overdue"),
    ],
)
def test_a_held_run_ends_lost_with_the_reason_and_its_results_kept(
    fleet: Fleet, client: TestClient, tokens: Tokens, fault: Fault, why: str
) -> None:
    host, job_id, run_id = fleet.job_on_new_host()
    fleet.send(host, snapshot(run_id, 0, [counters("syscalls", {"read": 7})]), job=job_id)
    fault(fleet, host, run_id)
    run = fleet.run(job_id)
    assert _lost(run, why.format(host=host)), run
    assert run["snapshots"] == 1
    results = client.get(f"/v1/jobs/{job_id}/results", headers=tokens.headers("viewer")).json()
    assert results["merged"][0]["rows"] == [[["read"], [7]]], results
    # The verdict stands: a late final state does not revive the run; a late snapshot is kept.
    fleet.send(host, snapshot(run_id, 1, [counters("syscalls", {"read": 9})]), job=job_id)
    fleet.send(host, state(run_id, "succeeded"), job=job_id)
    run = fleet.run(job_id)
    assert (run["state"], run["snapshots"], run["job_state"]) == ("failed", 2, "failed")


def test_a_run_missing_from_one_beat_is_given_the_grace(fleet: Fleet) -> None:
    host, job_id, run_id = fleet.job_on_new_host()
    fleet.beat(host)  # started just now: the beat may have been built before the run began
    assert fleet.run(job_id)["state"] == "running"
    fleet.beat(host, run_id)  # listed again: forgiven
    fleet.age_run(run_id, GRACE_S + 1)
    fleet.beat(host, run_id)
    fleet.sweep()
    assert fleet.run(job_id)["state"] == "running"


def test_an_accepted_run_left_out_of_beats_for_the_grace_is_lost(fleet: Fleet) -> None:
    host, job_id, run_id = fleet.job_on_new_host()
    with fleet.sessions() as session:  # back to accepted, compiling
        session.execute(
            update(Run).where(Run.id == run_id).values(state="pending", started_at=None)
        )
        session.commit()
    fleet.beat(host)
    assert fleet.run(job_id)["state"] == "pending"
    fleet.ingest.leases.unlisted_since[run_id] -= timedelta(seconds=GRACE_S + 1)
    fleet.beat(host)
    assert _lost(fleet.run(job_id), f"the agent on {host} no longer has the run")


def test_silence_is_not_judged_while_ingest_cannot_hear(fleet: Fleet) -> None:
    host, job_id, _ = fleet.job_on_new_host()
    fleet.silence(host, TIMEOUT_S + 1)
    fleet.ingest.link.hearing_since = None  # Redis is away: the controller is deaf
    fleet.sweep()
    assert fleet.run(job_id)["state"] == "running"
    fleet.ingest.link.hearing_since = utcnow()  # back just now: agents get a timeout to beat
    fleet.sweep()
    assert fleet.run(job_id)["state"] == "running"
    fleet.ingest.link.hearing_since -= timedelta(seconds=TIMEOUT_S + 1)
    fleet.sweep()
    assert _lost(fleet.run(job_id), f"the agent on {host} stopped heartbeating at")


def test_cancel_on_an_away_host_ends_the_run_at_once(
    fleet: Fleet, client: TestClient, tokens: Tokens, dispatcher: RecordingDispatcher
) -> None:
    (away, away_job, away_run), (here, here_job, here_run) = (
        fleet.job_on_new_host(),
        fleet.job_on_new_host(),
    )
    fleet.silence(away, TIMEOUT_S + 1)
    for job_id in (away_job, here_job):
        answer = client.post(f"/v1/jobs/{job_id}/cancel", headers=tokens.headers("operator"))
        assert answer.status_code == 200, answer.text
    gone = fleet.run(away_job)
    assert (gone["state"], gone["job_state"]) == ("cancelled", "cancelled"), gone
    assert gone["reason"].startswith(f"cancelled while {away} was offline"), gone
    # An online host is asked, and answers for itself.
    assert fleet.run(here_job)["state"] == "running"
    assert {away_run, here_run} <= set(dispatcher.cancels)
    fleet.send(here, state(here_run, "cancelled"), job=here_job)
    assert fleet.run(here_job)["job_state"] == "cancelled"


def test_cancel_while_the_broker_is_down_is_a_503_and_ends_what_it_can(
    fleet: Fleet,
    client: TestClient,
    tokens: Tokens,
    dispatcher: RecordingDispatcher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (away, away_job, _), (here, here_job, here_run) = (
        fleet.job_on_new_host(),
        fleet.job_on_new_host(),
    )
    fleet.silence(away, TIMEOUT_S + 1)

    def broker_down(*, host: str, run_id: str) -> None:
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(dispatcher, "request_cancel", broker_down)
    answer = client.post(f"/v1/jobs/{here_job}/cancel", headers=tokens.headers("operator"))
    assert answer.status_code == 503, answer.text
    assert f"{here} could not be told to stop" in answer.json()["detail"]
    assert fleet.run(here_job)["state"] == "running"
    answer = client.post(f"/v1/jobs/{away_job}/cancel", headers=tokens.headers("operator"))
    assert answer.status_code == 200, "an away host's run ends here, broker or not"
    assert fleet.run(away_job)["state"] == "cancelled"
    monkeypatch.undo()
    answer = client.post(f"/v1/jobs/{here_job}/cancel", headers=tokens.headers("operator"))
    assert answer.status_code == 200, "tried again once the broker is back"
    assert here_run in dispatcher.cancels
