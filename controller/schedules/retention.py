"""Retention: a schedule keeps its newest runs and/or its recent ones; the rest is deleted."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from controller.db import utcnow
from controller.jobs.models import Job, JobEvent, JobState, SnapshotRow
from controller.reports.store import RunDigestRow
from controller.schedules.models import Schedule, ScheduleFire

log = logging.getLogger(__name__)


def prune(*, session: Session, schedule: Schedule, now: datetime | None = None) -> list[str]:
    """Delete finished jobs past the retention, with their runs, snapshots and events."""
    if schedule.max_runs is None and schedule.max_age_s is None:
        return []
    now = now or utcnow()
    jobs = session.execute(
        select(Job.id, Job.state, Job.created_at)
        .join(ScheduleFire, ScheduleFire.job_id == Job.id)
        .where(ScheduleFire.schedule_id == schedule.id)
        .order_by(Job.created_at.desc(), Job.id)
    ).all()
    doomed: list[str] = []
    for position, (job_id, state, created_at) in enumerate(jobs):
        too_many = schedule.max_runs is not None and position >= schedule.max_runs
        too_old = schedule.max_age_s is not None and created_at < now - timedelta(
            seconds=schedule.max_age_s
        )
        # An unfinished job is still being written by ingest: it waits for the next prune.
        if (too_many or too_old) and JobState(state).final:
            doomed.append(job_id)
    if not doomed:
        return []
    session.execute(delete(SnapshotRow).where(SnapshotRow.job_id.in_(doomed)))
    session.execute(delete(RunDigestRow).where(RunDigestRow.job_id.in_(doomed)))
    session.execute(delete(JobEvent).where(JobEvent.job_id.in_(doomed)))
    session.execute(update(ScheduleFire).where(ScheduleFire.job_id.in_(doomed)).values(job_id=None))
    for job in session.scalars(select(Job).where(Job.id.in_(doomed))):
        session.delete(job)  # the ORM cascade removes its runs
    session.commit()
    log.info("schedule %s: pruned %d jobs", schedule.name, len(doomed))
    return doomed
