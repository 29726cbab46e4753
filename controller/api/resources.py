"""Resources as dependencies: a route takes `job: JobDep` and never sees a missing one; each
404 is written here, once."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from controller.api.deps import Operator, SessionDep
from controller.api.params import HostPath, IdPath
from controller.errors import NotFound
from controller.hosts import service as hosts
from controller.hosts.models import Host
from controller.jobs import service as jobs
from controller.jobs.models import Job
from controller.schedules import service as schedules
from controller.schedules.models import Schedule


def find_job(*, session: SessionDep, job_id: str) -> Job:
    """The job, or a 404; also for job ids that come as query parameters."""
    job = jobs.get(session=session, job_id=job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def job_or_404(job_id: IdPath, session: SessionDep) -> Job:
    return find_job(session=session, job_id=job_id)


def schedule_or_404(schedule_id: IdPath, session: SessionDep) -> Schedule:
    schedule = schedules.get(session=session, schedule_id=schedule_id)
    if schedule is None:
        raise NotFound(f"no schedule {schedule_id}")
    return schedule


def schedule_to_change(_: Operator, schedule: ScheduleDep) -> Schedule:
    """The schedule, for a caller who may change it: 401/403 before 404, as for every write."""
    return schedule


def host_or_404(name: HostPath, session: SessionDep) -> Host:
    host = hosts.get(session=session, name=name)
    if host is None:
        raise NotFound(f"no host {name!r}")
    return host


JobDep = Annotated[Job, Depends(job_or_404)]
ScheduleDep = Annotated[Schedule, Depends(schedule_or_404)]
HostDep = Annotated[Host, Depends(host_or_404)]
ScheduleToChange = Annotated[Schedule, Depends(schedule_to_change)]
