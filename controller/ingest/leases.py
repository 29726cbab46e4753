"""Run leases: every run the controller handed out ends, even when its agent never says so.

A run the host has (accepted or running) is held on a lease that lapses when the agent stops
heartbeating, when its heartbeat no longer lists the run (a restarted agent knows nothing), or
when duration + grace + slack pass with no final event. A lapsed run ends `failed` with a
reason starting `lost:` and error code `lost`; the snapshots stored so far stay, so the job's
results keep them. Runs no host ever took end `expired`, as before.

Only the database is needed: the sweep goes on while Redis is away, and then judges no host
by its silence (the controller is deaf, not the agents dead).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from controller.db import utcnow
from controller.hosts.models import Host
from controller.jobs import locks
from controller.jobs import service as jobs_service
from controller.jobs.models import Job, Run
from controller.settings import Settings
from node_agent.protocol import ErrorCode, RunState, TraceRequest

log = logging.getLogger(__name__)

# The agent stops a trace this long after its deadline (TraceRequest.grace_s; the controller
# sends the default).
TRACE_GRACE_S: float = TraceRequest.model_fields["grace_s"].default


@dataclass(frozen=True)
class LeaseRules:
    heartbeat_timeout_s: float
    unlisted_grace_s: float
    slack_s: float
    task_expiry_s: float

    @classmethod
    def of(cls, settings: Settings) -> LeaseRules:
        return cls(
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
            unlisted_grace_s=settings.lease_unlisted_grace_s,
            slack_s=settings.lease_slack_s,
            task_expiry_s=settings.task_expiry_s,
        )

    def deadline(
        self, *, started_at: datetime | None, dispatched_at: datetime | None, duration_s: float
    ) -> datetime | None:
        """When a held run must have sent its final event; None if that cannot be known yet."""
        if started_at is not None:
            began = started_at
        elif dispatched_at is not None:
            # Accepted but not started: the latest it can have been taken from the queue.
            began = dispatched_at + timedelta(seconds=self.task_expiry_s)
        else:
            return None
        return began + timedelta(seconds=duration_s + TRACE_GRACE_S + self.slack_s)


_HELD_STATES = (RunState.running.value, RunState.pending.value)
HELD = or_(
    Run.state == RunState.running.value,
    (Run.state == RunState.pending.value) & Run.expires_at.is_(None),
)  # runs a host has: running, or accepted (no expiry any more) and compiling


@dataclass
class Leases:
    """The lease rules, and which accepted runs a heartbeat has left out since when.

    That memory is per process and only delays a verdict when lost (a restart, another
    controller): a running run is judged by its start time alone.
    """

    rules: LeaseRules
    unlisted_since: dict[str, datetime] = field(default_factory=dict)
    # Whether older events of a host are still unread (held by a dead peer): then a beat that
    # leaves a run out proves nothing yet; its final state may be among them.
    in_flight: Callable[[str], bool] = lambda host: False

    def heard(self, session: Session, *, host: str, running: Sequence[str]) -> list[Run]:
        """Compare a heartbeat's `running` list with the runs the database says the host holds;
        the ones it left out for longer than the grace end lost. Returns them."""
        return self.heard_many(session, {host: running})

    def heard_many(self, session: Session, beats: Mapping[str, Sequence[str]]) -> list[Run]:
        """heard() for several hosts' latest heartbeats, with one query for their runs."""
        held: dict[str, list[Run]] = {host: [] for host in beats}
        query = select(Run).where(HELD, Run.host_name.in_(beats)).order_by(Run.id)
        for run in session.scalars(locks.locked(query)).all():
            held[run.host_name].append(run)
        ended: list[Run] = []
        for host, running in beats.items():
            ended += self._judge(session, host, set(running), held[host])
        _refresh_jobs(session, ended)
        return ended

    def _judge(self, session: Session, host: str, listed: set[str], held: list[Run]) -> list[Run]:
        now = utcnow()
        grace = timedelta(seconds=self.rules.unlisted_grace_s)
        ended: list[Run] = []
        for run in held:
            if run.id in listed:
                self.unlisted_since.pop(run.id, None)
                continue
            # A run accepted just before the beat may be missing from it: a running run is
            # judged by its start, an accepted one by how long beats have left it out.
            since = self.unlisted_since.setdefault(run.id, now)
            if now - (run.started_at or since) < grace or self.in_flight(host):
                continue
            reason = (
                f"lost: the agent on {host} no longer has the run (restarted, or its final"
                " state never arrived)"
            )
            if _end_lost(session, run, reason):
                ended.append(run)
        return ended

    def sweep(self, session: Session, *, hearing_since: datetime | None) -> int:
        """End expired and lapsed runs; returns how many ended. `hearing_since`: since when
        ingest has been reading Redis without a break (None while it cannot)."""
        now = utcnow()
        ended = [*_expire_unstarted(session, now), *self._lapse(session, now, hearing_since)]
        _refresh_jobs(session, ended)
        return len(ended)

    def _lapse(self, session: Session, now: datetime, hearing_since: datetime | None) -> list[Run]:
        # Plain columns, one query: the sweep runs every second over every run in progress.
        held = session.execute(
            select(
                Run.id,
                Run.host_name,
                Run.started_at,
                Run.dispatched_at,
                Job.duration_s,
                Host.last_heartbeat,
            )
            .join(Job, Job.id == Run.job_id)
            .outerjoin(Host, Host.name == Run.host_name)
            .where(HELD)
        ).all()
        timeout = timedelta(seconds=self.rules.heartbeat_timeout_s)
        lapsed: dict[str, str] = {}
        for run_id, host, started_at, dispatched_at, duration_s, last in held:
            reason = None
            # Silence counts from when ingest could last hear it, not from an outage of its own.
            heard = max(last, hearing_since) if last and hearing_since else hearing_since
            deadline = self.rules.deadline(
                started_at=started_at, dispatched_at=dispatched_at, duration_s=duration_s
            )
            if heard is not None and now - heard > timeout:
                reason = (
                    f"lost: the agent on {host} stopped heartbeating at {_when(last)}"
                    if last
                    else f"lost: no heartbeat from the agent on {host}"
                )
            elif deadline is not None and now > deadline:
                reason = f"lost: no final snapshot by {_when(deadline)}"
            if reason is not None:
                lapsed[run_id] = reason
        # Locked and re-read: another controller's sweep or ingest may have ended one since.
        ended = [
            run
            for run in locks.lock_runs(session, lapsed)
            if run.state in _HELD_STATES and _end_lost(session, run, lapsed[run.id])
        ]
        # Forget left-out runs that ended some other way (their final state came after all).
        still_held = {run_id for run_id, *_ in held}
        self.unlisted_since = {k: v for k, v in self.unlisted_since.items() if k in still_held}
        return ended


def _expire_unstarted(session: Session, now: datetime) -> list[Run]:
    """Runs whose host never started them before their expiry end `expired`."""
    query = select(Run).where(Run.state == RunState.pending.value, Run.expires_at < now)
    # Locked in id order; PostgreSQL re-checks the condition after waiting for a lock.
    overdue = session.scalars(locks.locked(query.order_by(Run.id))).all()
    for run in overdue:
        jobs_service.set_run_state(
            session=session,
            run=run,
            state=RunState.expired,
            reason="the host did not start the run before it expired (host away?)",
        )
    if overdue:
        log.info("lease: %d runs expired", len(overdue))
    return list(overdue)


def _end_lost(session: Session, run: Run, reason: str) -> bool:
    changed = jobs_service.set_run_state(
        session=session,
        run=run,
        state=RunState.failed,
        reason=reason,
        error={"code": ErrorCode.lost.value, "message": reason, "detail": None},
    )
    if changed:
        log.warning("run %s (job %s) on %s: %s", run.id, run.job_id, run.host_name, reason)
    return changed


def _refresh_jobs(session: Session, runs: Iterable[Run]) -> None:
    locks.refresh_jobs(session, {run.job_id for run in runs})


def _when(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
