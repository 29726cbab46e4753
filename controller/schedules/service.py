"""Schedules: validate like jobs, claim slots atomically, fire real jobs, prune old ones."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller.db import utcnow
from controller.dispatch import Dispatcher
from controller.errors import Conflict, ControllerError, Forbidden, InvalidRequest
from controller.jobs import service as jobs_service
from controller.jobs.models import Job, JobCreate, JobState
from controller.metrics import tally
from controller.schedules import continuous, retention
from controller.schedules.models import (
    FireOutcome,
    FirePublic,
    Retention,
    Schedule,
    ScheduleCreate,
    ScheduleFire,
    SchedulePublic,
    ScheduleUpdate,
)
from controller.schedules.timing import Plan, Timing, TimingError, blocked_by_overlap, plan_due
from controller.settings import Settings
from node_agent.errors import UnknownProgram
from node_agent.programs import get_program

log = logging.getLogger(__name__)
RECENT = 10


def timing_of(schedule: Schedule) -> Timing:
    if schedule.continuous and schedule.interval_s is not None:
        # One fire per horizon; the slots in between are the job's own snapshots.
        horizon = float(schedule.template["duration_s"])
        return Timing(
            interval_s=horizon,
            anchor=continuous.first_slot(schedule.created_at, schedule.interval_s),
        )
    return Timing(
        cron=schedule.cron,
        time_zone=schedule.timezone,
        interval_s=schedule.interval_s,
        anchor=schedule.created_at,
    )


def _check_timing(*, cron: str | None, time_zone: str, interval_s: float | None) -> None:
    try:
        Timing(cron=cron, time_zone=time_zone, interval_s=interval_s)
    except TimingError as exc:
        raise InvalidRequest(exc.message, field=exc.field) from None


def _admin_only(program: str) -> bool:
    try:
        return get_program(program).admin_only
    except UnknownProgram:
        return False  # validate() names the unknown program


def _check_template(template: JobCreate, *, settings: Settings, admin: bool) -> dict[str, Any]:
    """The job checks, with fields under `template.`; targets are resolved only when firing.
    An admin-only program (bpftrace) is scheduled by an admin only, and fires as theirs."""
    if template.program == "custom":
        # Its bcc C and maps would be stored and compiled at every slot, on every host.
        raise InvalidRequest(
            "schedules run catalog programs and bpftrace scripts, not custom bcc C",
            field="template.program",
        )
    try:
        params = jobs_service.validate(template, settings=settings, may_run_admin_only=admin)
    except ControllerError as exc:
        raise type(exc)(exc.message, field=f"template.{exc.field or 'program'}") from None
    stored: dict[str, Any] = template.model_dump(mode="json", exclude_none=True)
    stored["params"] = params
    return stored


def require_may_change(schedule: Schedule, *, admin: bool) -> None:
    """A schedule that runs an admin-only program is changed or run by admins only."""
    program = str(schedule.template.get("program", ""))
    if _admin_only(program) and not admin:
        raise Forbidden(
            f"this schedule runs the {program} program: changing it needs the admin role",
            field="template.program",
        )


def stored_template(schedule: Schedule) -> JobCreate:
    """A schedule's stored template; one stored under older, looser bounds (a duration over a
    day) fails its slot or its update saying so, instead of failing the scheduler."""
    try:
        return JobCreate.model_validate(schedule.template)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise InvalidRequest(
            f"the stored template no longer validates: {where}: {error['msg']}",
            field=f"template.{where}",
        ) from None


def _horizon_job(template: JobCreate, interval_s: float | None) -> JobCreate:
    """A continuous schedule's job: snapshots every interval_s for template.duration_s."""
    if interval_s is None:
        raise InvalidRequest("a continuous schedule needs interval_s, not cron", field="cron")
    if template.duration_s < 2 * interval_s:
        raise InvalidRequest(
            "a continuous schedule's duration (its horizon) must hold at least two intervals",
            field="template.duration_s",
        )
    return template.model_copy(update={"interval_s": interval_s})


# ScheduleCreate's fields stored in the columns of the same name.
_AS_GIVEN = {
    "name",
    "cron",
    "interval_s",
    "enabled",
    "allow_overlap",
    "misfire_grace_s",
    "continuous",
}


def create(
    *,
    session: Session,
    settings: Settings,
    schedule_in: ScheduleCreate,
    created_by: str | None,
    admin: bool,
) -> Schedule:
    _check_timing(
        cron=schedule_in.cron, time_zone=schedule_in.time_zone, interval_s=schedule_in.interval_s
    )
    job_in = schedule_in.template
    if schedule_in.continuous:
        job_in = _horizon_job(job_in, schedule_in.interval_s)
    template = _check_template(job_in, settings=settings, admin=admin)
    if session.scalar(select(Schedule.id).where(Schedule.name == schedule_in.name)):
        raise Conflict(f"a schedule named {schedule_in.name!r} exists", field="name")
    now = utcnow()
    schedule = Schedule(
        id=str(uuid.uuid4()),
        **schedule_in.model_dump(include=_AS_GIVEN),
        timezone=schedule_in.time_zone,
        template=template,
        **schedule_in.retention.model_dump(),  # max_runs, max_age_s
        created_by=created_by,
        created_at=now,
        updated_at=now,
    )
    schedule.next_fire_at = timing_of(schedule).next_after(now) if schedule.enabled else None
    session.add(schedule)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise InvalidRequest(
            f"a schedule named {schedule_in.name!r} exists", field="name"
        ) from None
    log.info("schedule %s (%s) created", schedule.name, schedule.id)
    return schedule


def update_schedule(
    *,
    session: Session,
    settings: Settings,
    schedule: Schedule,
    update_in: ScheduleUpdate,
    admin: bool,
) -> Schedule:
    require_may_change(schedule, admin=admin)
    cron, interval_s = schedule.cron, schedule.interval_s
    if update_in.cron is not None:
        cron, interval_s = update_in.cron, None
    elif update_in.interval_s is not None:
        cron, interval_s = None, update_in.interval_s
    time_zone = update_in.time_zone or schedule.timezone
    _check_timing(cron=cron, time_zone=time_zone, interval_s=interval_s)
    horizon = schedule.template.get("duration_s")
    if schedule.continuous and (update_in.template is not None or cron is not None):
        job_in = update_in.template or stored_template(schedule)
        schedule.template = _check_template(
            _horizon_job(job_in, interval_s), settings=settings, admin=admin
        )
    elif schedule.continuous and interval_s != schedule.interval_s:
        job_in = stored_template(schedule)
        schedule.template = _check_template(
            _horizon_job(job_in, interval_s), settings=settings, admin=admin
        )
    elif update_in.template is not None:
        schedule.template = _check_template(update_in.template, settings=settings, admin=admin)
    retiming = (cron, interval_s, time_zone, horizon) != (
        schedule.cron,
        schedule.interval_s,
        schedule.timezone,
        schedule.template.get("duration_s"),
    )
    schedule.cron, schedule.interval_s, schedule.timezone = cron, interval_s, time_zone
    if update_in.retention is not None:
        schedule.max_runs = update_in.retention.max_runs
        schedule.max_age_s = update_in.retention.max_age_s
    if update_in.allow_overlap is not None:
        schedule.allow_overlap = update_in.allow_overlap
    if update_in.misfire_grace_s is not None:
        schedule.misfire_grace_s = update_in.misfire_grace_s
    now = utcnow()
    schedule.updated_at = now
    if update_in.enabled is not None and update_in.enabled != schedule.enabled:
        set_enabled(
            session=session, schedule=schedule, enabled=update_in.enabled, admin=admin, commit=False
        )
    elif retiming and schedule.enabled:
        schedule.next_fire_at = timing_of(schedule).next_after(now)
    session.commit()
    return schedule


def set_enabled(
    *, session: Session, schedule: Schedule, enabled: bool, admin: bool, commit: bool = True
) -> Schedule:
    """Pause clears the next slot; resume starts from now, never replaying the paused time.
    An admin-only program's schedule is paused and resumed by admins only (it fires as one)."""
    require_may_change(schedule, admin=admin)
    schedule.enabled = enabled
    schedule.next_fire_at = timing_of(schedule).next_after(utcnow()) if enabled else None
    schedule.updated_at = utcnow()
    if commit:
        session.commit()
    return schedule


def get(*, session: Session, schedule_id: str) -> Schedule | None:
    return session.get(Schedule, schedule_id)


def find(*, session: Session, ref: str) -> Schedule | None:
    """A schedule by id or, failing that, by name (names are unique)."""
    found = session.get(Schedule, ref)
    return found or session.scalar(select(Schedule).where(Schedule.name == ref))


def list_schedules(
    *, session: Session, limit: int = 50, offset: int = 0
) -> tuple[list[Schedule], int]:
    total = session.scalar(select(func.count()).select_from(Schedule)) or 0
    rows = session.scalars(select(Schedule).order_by(Schedule.name).limit(limit).offset(offset))
    return list(rows), total


def remove(*, session: Session, schedule: Schedule, admin: bool) -> None:
    """Delete a schedule and its slot records; the jobs it made stay until pruned by hand."""
    require_may_change(schedule, admin=admin)
    session.execute(delete(ScheduleFire).where(ScheduleFire.schedule_id == schedule.id))
    session.delete(schedule)
    session.commit()


# -- firing ---------------------------------------------------------------------------------------


def claim(*, session: Session, schedule_id: str, due: datetime, next_fire_at: datetime) -> bool:
    """Advance next_fire_at only if it still holds `due`: of racing schedulers, one wins."""
    result = session.execute(
        update(Schedule)
        .where(
            Schedule.id == schedule_id,
            Schedule.enabled.is_(True),
            Schedule.next_fire_at == due,
        )
        .values(next_fire_at=next_fire_at)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return getattr(result, "rowcount", 0) == 1


def due_schedules(*, session: Session, now: datetime) -> list[tuple[str, datetime]]:
    rows = session.execute(
        select(Schedule.id, Schedule.next_fire_at).where(
            Schedule.enabled.is_(True), Schedule.next_fire_at <= now
        )
    ).all()
    return [(sid, due) for sid, due in rows if due is not None]


def fire_due(
    *,
    session: Session,
    settings: Settings,
    dispatcher: Dispatcher,
    schedule_id: str,
    due: datetime,
    now: datetime,
) -> Plan | None:
    """Claim a due slot and act on it; None when another scheduler claimed it first."""
    schedule = session.get(Schedule, schedule_id)
    if schedule is None:
        return None
    plan = plan_due(timing=timing_of(schedule), due=due, now=now, grace_s=schedule.misfire_grace_s)
    assert plan.next_fire_at is not None
    if not claim(session=session, schedule_id=schedule_id, due=due, next_fire_at=plan.next_fire_at):
        return None
    session.refresh(schedule)
    reason = plan.reason
    if plan.not_recorded:
        reason = f"{reason} (and {plan.not_recorded} earlier slots not recorded)"
    for slot in plan.skipped:
        _record(session, schedule, slot, FireOutcome.skipped_misfire, reason=reason)
    session.commit()
    if plan.fire is not None:
        fire(
            session=session,
            settings=settings,
            dispatcher=dispatcher,
            schedule=schedule,
            slot=plan.fire,
        )
    return plan


def fire(
    *,
    session: Session,
    settings: Settings,
    dispatcher: Dispatcher,
    schedule: Schedule,
    slot: datetime,
    manual: bool = False,
) -> ScheduleFire:
    """Make a real job for one claimed slot, unless an earlier one is still running."""
    # A continuous horizon hands over to the next while the old job sends its last snapshot.
    allow_overlap = schedule.allow_overlap or schedule.continuous
    if not manual and blocked_by_overlap(
        allow_overlap=allow_overlap, previous_final=_previous_final(session, schedule)
    ):
        row = _record(
            session,
            schedule,
            slot,
            FireOutcome.skipped_overlap,
            reason="the previous job is still running",
        )
        session.commit()
        return row
    try:
        job = jobs_service.create(
            session=session,
            settings=settings,
            dispatcher=dispatcher,
            job_in=stored_template(schedule),
            created_by=f"schedule:{schedule.name}",
            # Its template passed _check_template, as an admin's when its program needs one.
            may_run_admin_only=True,
        )
    except ControllerError as exc:
        session.rollback()
        row = _record(
            session, schedule, slot, FireOutcome.failed, reason=exc.message, manual=manual
        )
        session.commit()
        log.warning("schedule %s slot %s failed: %s", schedule.name, slot, exc.message)
        return row
    row = _record(session, schedule, slot, FireOutcome.fired, job_id=job.id, manual=manual)
    schedule.last_fired_at = slot
    session.commit()
    log.info("schedule %s slot %s: job %s", schedule.name, slot.isoformat(), job.id)
    retention.prune(session=session, schedule=schedule)
    return row


def run_now(
    *,
    session: Session,
    settings: Settings,
    dispatcher: Dispatcher,
    schedule: Schedule,
    admin: bool,
) -> ScheduleFire:
    """An extra, manual slot: it ignores the overlap policy and leaves the timetable alone."""
    require_may_change(schedule, admin=admin)
    return fire(
        session=session,
        settings=settings,
        dispatcher=dispatcher,
        schedule=schedule,
        slot=utcnow(),
        manual=True,
    )


def _previous_final(session: Session, schedule: Schedule) -> list[bool]:
    states = session.scalars(
        select(Job.state)
        .join(ScheduleFire, ScheduleFire.job_id == Job.id)
        .where(ScheduleFire.schedule_id == schedule.id)
    ).all()
    return [JobState(s).final for s in states]


def _record(
    session: Session,
    schedule: Schedule,
    slot: datetime,
    outcome: FireOutcome,
    *,
    reason: str | None = None,
    job_id: str | None = None,
    manual: bool = False,
) -> ScheduleFire:
    row = ScheduleFire(
        schedule_id=schedule.id,
        slot=slot,
        outcome=outcome.value,
        job_id=job_id,
        reason=reason,
        manual=manual,
        created_at=utcnow(),
    )
    session.add(row)
    tally.count(session, "schedule_fires", outcome.value)
    return row


# -- views ----------------------------------------------------------------------------------------


def to_public(session: Session, schedule: Schedule, *, recent: int = RECENT) -> SchedulePublic:
    rows = session.execute(
        select(ScheduleFire, Job.state)
        .outerjoin(Job, Job.id == ScheduleFire.job_id)
        .where(ScheduleFire.schedule_id == schedule.id)
        .order_by(ScheduleFire.slot.desc(), ScheduleFire.id.desc())
        .limit(recent)
    ).all()
    fires = [
        FirePublic(
            slot=row.slot,
            outcome=FireOutcome(row.outcome),
            job_id=row.job_id,
            job_state=JobState(state) if state else None,
            reason=row.reason,
            manual=row.manual,
        )
        for row, state in rows
    ]
    return SchedulePublic(
        id=schedule.id,
        name=schedule.name,
        cron=schedule.cron,
        time_zone=schedule.timezone,
        interval_s=schedule.interval_s,
        template=schedule.template,
        enabled=schedule.enabled,
        retention=Retention(max_runs=schedule.max_runs, max_age_s=schedule.max_age_s),
        allow_overlap=schedule.allow_overlap,
        misfire_grace_s=schedule.misfire_grace_s,
        continuous=schedule.continuous,
        next_fire_at=schedule.next_fire_at,
        last_fired_at=schedule.last_fired_at,
        created_by=schedule.created_by,
        created_at=schedule.created_at,
        recent=fires,
    )
