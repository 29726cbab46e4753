"""Two runs of a schedule host by host, through the reports comparison."""

from __future__ import annotations

from sqlalchemy.orm import Session

from controller.errors import Conflict, InvalidRequest
from controller.jobs.models import Job, JobState
from controller.reports import service as reports
from controller.reports.models import CompareReport
from controller.schedules.models import Schedule
from controller.schedules.trend import fired

# Runs that may hold results; failed jobs have none to compare.
FINISHED = (JobState.succeeded.value, JobState.partial.value, JobState.cancelled.value)


def _runs(session: Session, schedule: Schedule) -> list[tuple[str, bool]]:
    """The schedule's fired jobs, newest slot first, with whether each finished with results."""
    rows = session.execute(fired(schedule, Job.id, Job.state)).all()
    return [(job_id, state in FINISHED) for job_id, state in rows]


def pick(
    *, session: Session, schedule: Schedule, base_job: str | None, other_job: str | None
) -> tuple[str, str]:
    """The jobs to compare: given ones must be this schedule's; missing ones default to the
    latest finished runs (other = the newest, base = the newest finished one before other)."""
    runs = _runs(session, schedule)
    order = [job_id for job_id, _ in runs]
    for field, job_id in (("base_job", base_job), ("other_job", other_job)):
        if job_id is not None and job_id not in order:
            raise InvalidRequest(
                f"job {job_id} is not a run of schedule {schedule.name}", loc=("query", field)
            )
    finished = [job_id for job_id, done in runs if done]
    if other_job is None:
        candidates = [j for j in finished if j != base_job]
        if not candidates:
            raise Conflict(f"schedule {schedule.name} has no finished run to compare")
        other_job = candidates[0]
    if base_job is None:
        older = [j for j in finished if order.index(j) > order.index(other_job)]
        if not older:
            raise Conflict(f"schedule {schedule.name} has no finished run before job {other_job}")
        base_job = older[0]
    return base_job, other_job


def compare_runs(
    *, session: Session, schedule: Schedule, base_job: str | None, other_job: str | None
) -> CompareReport:
    base_id, other_id = pick(
        session=session, schedule=schedule, base_job=base_job, other_job=other_job
    )
    base, other = session.get(Job, base_id), session.get(Job, other_id)
    assert base is not None and other is not None
    return reports.compare(
        reports.job_report(session=session, job=base),
        reports.job_report(session=session, job=other),
    )
