"""Routes for schedules: create, list, show, update, pause, resume, run now, delete, trend,
compare."""

from __future__ import annotations

from enum import Enum

from fastapi import APIRouter, Query, Response, status
from sqlalchemy.orm import Session

from controller.api.deps import DispatcherDep, Operator, SessionDep, SettingsDep, Viewer
from controller.api.params import Offset
from controller.api.resources import ScheduleDep, ScheduleToChange
from controller.api.responses import AUTHENTICATED, DELETED, errors
from controller.auth.models import ApiToken, Role
from controller.errors import InvalidRequest
from controller.reports.models import CompareReport
from controller.reports.trend_chart import render_trend_html
from controller.schedules import service
from controller.schedules.compare import compare_runs
from controller.schedules.models import (
    Schedule,
    ScheduleCreate,
    SchedulePublic,
    SchedulesPublic,
    ScheduleUpdate,
)
from controller.schedules.trend import BadMetric, Metric, ScheduleTrend, trend

router = APIRouter(prefix="/v1/schedules", tags=["schedules"], responses=AUTHENTICATED)


def _admin(token: ApiToken) -> bool:
    return Role(token.role).allows(Role.admin)


class TrendFormat(str, Enum):
    json = "json"
    html = "html"


@router.post(
    "", operation_id="create_schedule", responses=errors(409), status_code=status.HTTP_201_CREATED
)
def create_schedule(
    schedule_in: ScheduleCreate, session: SessionDep, settings: SettingsDep, token: Operator
) -> SchedulePublic:
    """Create a schedule that fires its job template by cron or interval."""
    schedule = service.create(
        session=session,
        settings=settings,
        schedule_in=schedule_in,
        created_by=token.name,
        admin=_admin(token),
    )
    return service.to_public(session, schedule)


@router.get("", operation_id="list_schedules")
def list_schedules(
    session: SessionDep,
    _: Viewer,
    limit: int = Query(default=50, ge=1, le=500),
    offset: Offset = 0,
) -> SchedulesPublic:
    """List schedules by name, each with its next fire time and recent jobs."""
    rows, total = service.list_schedules(session=session, limit=limit, offset=offset)
    return SchedulesPublic(data=[service.to_public(session, s) for s in rows], count=total)


@router.get("/{schedule_id}", operation_id="get_schedule", responses=errors(404))
def get_schedule(session: SessionDep, _: Viewer, schedule: ScheduleDep) -> SchedulePublic:
    """Show a schedule, its next fire time and its recent slots."""
    return service.to_public(session, schedule)


@router.patch("/{schedule_id}", operation_id="update_schedule", responses=errors(404))
def update_schedule(
    update_in: ScheduleUpdate,
    session: SessionDep,
    settings: SettingsDep,
    schedule: ScheduleToChange,
    token: Operator,
) -> SchedulePublic:
    """Change a schedule's timing, template, retention or policies; one running an admin-only
    program (bpftrace) is changed by admins only."""
    service.update_schedule(
        session=session,
        settings=settings,
        schedule=schedule,
        update_in=update_in,
        admin=_admin(token),
    )
    return service.to_public(session, schedule)


@router.delete("/{schedule_id}", operation_id="delete_schedule", **DELETED)
def delete_schedule(session: SessionDep, schedule: ScheduleToChange, token: Operator) -> Response:
    """Delete a schedule; the jobs it made are kept (an admin-only program's: admins)."""
    service.remove(session=session, schedule=schedule, admin=_admin(token))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{schedule_id}/pause", operation_id="pause_schedule", responses=errors(404))
def pause_schedule(
    session: SessionDep, schedule: ScheduleToChange, token: Operator
) -> SchedulePublic:
    """Stop firing until resumed (an admin-only program's schedule: admins)."""
    return _enabled(session, schedule, False, token)


@router.post("/{schedule_id}/resume", operation_id="resume_schedule", responses=errors(404))
def resume_schedule(
    session: SessionDep, schedule: ScheduleToChange, token: Operator
) -> SchedulePublic:
    """Fire again from the next slot after now; paused slots are not replayed (an admin-only
    program's schedule: admins)."""
    return _enabled(session, schedule, True, token)


def _enabled(
    session: Session, schedule: Schedule, enabled: bool, token: ApiToken
) -> SchedulePublic:
    service.set_enabled(session=session, schedule=schedule, enabled=enabled, admin=_admin(token))
    return service.to_public(session, schedule)


@router.post("/{schedule_id}/run", operation_id="run_schedule", responses=errors(404))
def run_schedule(
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    schedule: ScheduleToChange,
    token: Operator,
) -> SchedulePublic:
    """Fire the template once now, outside the timetable (an admin-only program's: admins)."""
    service.run_now(
        session=session,
        settings=settings,
        dispatcher=dispatcher,
        schedule=schedule,
        admin=_admin(token),
    )
    return service.to_public(session, schedule)


@router.get(
    "/{schedule_id}/trend",
    operation_id="get_schedule_trend",
    response_model=ScheduleTrend,
    responses={**errors(404), 200: {"content": {"text/html": {}}}},
)
def get_schedule_trend(
    session: SessionDep,
    _: Viewer,
    schedule: ScheduleDep,
    metric: str = Query(
        description="p99:HIST, count:HIST|TABLE, total:TABLE, rate:TABLE, key:TABLE:KEY",
        max_length=256,
    ),
    limit: int = Query(default=200, ge=1, le=2000),
    format: TrendFormat = TrendFormat.json,
) -> ScheduleTrend | Response:
    """One series per host of a metric over the schedule's fired runs, oldest first.

    Also as a self-contained HTML page: a line chart per host and the table of values.
    """
    try:
        parsed = Metric.parse(metric)
    except BadMetric as exc:
        raise InvalidRequest(str(exc), loc=("query", "metric")) from None
    found = trend(session=session, schedule=schedule, metric=parsed, raw=metric, limit=limit)
    if format is TrendFormat.html:
        page = render_trend_html(found, schedule.name)
        return Response(page, media_type="text/html; charset=utf-8")
    return found


@router.get(
    "/{schedule_id}/compare", operation_id="compare_schedule_runs", responses=errors(404, 409)
)
def compare_schedule_runs(
    session: SessionDep,
    _: Viewer,
    schedule: ScheduleDep,
    base_job: str | None = Query(
        default=None, description="default: the run before other_job", max_length=64
    ),
    other_job: str | None = Query(
        default=None, description="default: the last finished run", max_length=64
    ),
) -> CompareReport:
    """Two runs of the schedule host by host (by default its last two finished runs)."""
    return compare_runs(session=session, schedule=schedule, base_job=base_job, other_job=other_job)
