"""Row locks for the writers that may run at once (ingest consumers, lease sweeps, the API).

With two controllers on PostgreSQL, two transactions can change runs of one job at the same
time. Each decides on rows it has locked and re-read: runs first, then jobs, each in id order
(no deadlock between two of these writers), and a job's state is computed from its runs only
after its row is locked, so the last of two writers sees both changes and a final state (and
its event) is written once. SQLite has one writer at a time and ignores FOR UPDATE.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from typing import Any

import psycopg.errors
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from controller.jobs import service as jobs_service
from controller.jobs.models import Job, Run

# Lost a lock race: the transaction is retried whole, the data is not at fault.
CONFLICTS = (
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
    psycopg.errors.LockNotAvailable,
)


def is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and isinstance(exc.orig, CONFLICTS)


def locked(query: Any) -> Any:
    """`query` taking row locks and refreshing the rows the session already holds."""
    return query.with_for_update().execution_options(populate_existing=True)


def lock_runs(session: Session, run_ids: Collection[str]) -> list[Run]:
    """The runs, locked in id order and as committed (or as this transaction left them)."""
    if not run_ids:
        return []
    query = select(Run).where(Run.id.in_(set(run_ids))).order_by(Run.id)
    return list(session.scalars(locked(query)))


def refresh_jobs(session: Session, job_ids: Collection[str]) -> None:
    """Each job's state from its runs', read once its row is locked."""
    if not job_ids:
        return
    session.flush()  # this transaction's run changes first (they hold their run locks)
    jobs = list(
        session.scalars(locked(select(Job).where(Job.id.in_(set(job_ids))).order_by(Job.id)))
    )
    states: dict[str, set[str]] = defaultdict(set)
    query = select(Run.job_id, Run.state).where(Run.job_id.in_(set(job_ids))).distinct()
    for job_id, run_state in session.execute(query):
        states[job_id].add(run_state)
    for job in jobs:
        jobs_service.refresh_state(session=session, job=job, run_states=states[job.id])


def lock_job(session: Session, job: Job) -> Job:
    """A job about to change with its runs (cancel): its runs, then it, locked and re-read,
    in the order the other writers take them."""
    lock_runs(session, [run.id for run in job.runs])
    session.scalars(locked(select(Job).where(Job.id == job.id))).one()
    return job
