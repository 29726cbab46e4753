"""Schedules: the list, a schedule's page with its slots and controls, and its trend.

Each control calls the service function its API route calls (controller/schedules/routes.py)
and answers 303 back to the schedule's page, so reloading never fires it again.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from controller.api.deps import DispatcherDep, SessionDep, SettingsDep
from controller.api.params import IdPath, Offset
from controller.auth.models import Role
from controller.console import schedule_trend
from controller.console.format import seconds
from controller.console.jobs_list import targets_text
from controller.console.web import FormDep, OperatorDep, VisitorDep, page, redirect
from controller.errors import NotFound
from controller.jobs.models import Targets
from controller.schedules import service
from controller.schedules.models import Schedule, SchedulePublic
from controller.schedules.trend import offered

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
RECENT = 20
MAX_HOSTS = 64  # hosts picked for a trend in one address
# Paths under /schedules/ that are pages, not schedules: a schedule so named is linked by id.
RESERVED = frozenset({"new"})


def ref(schedule: Schedule | SchedulePublic) -> str:
    """How the console's URLs name a schedule: its name, readable and stable."""
    return schedule.id if schedule.name in RESERVED else schedule.name


def find(ref: IdPath, session: SessionDep) -> Schedule:
    schedule = service.find(session=session, ref=ref)
    if schedule is None:
        raise NotFound(f"no schedule {ref!r}")
    return schedule


# Last in a route's parameters: the role and the CSRF token are checked before the lookup.
ScheduleDep = Annotated[Schedule, Depends(find)]


def timing(schedule: SchedulePublic) -> str:
    if schedule.cron is not None:
        return f"cron {schedule.cron} ({schedule.time_zone})"
    if schedule.continuous:  # a job per horizon, a slot per snapshot
        horizon = seconds(schedule.template.get("duration_s"))
        return f"every {seconds(schedule.interval_s)} (a job per {horizon})"
    return f"every {seconds(schedule.interval_s)}"


def targets(template: dict[str, Any]) -> str:
    """A template's targets in a few words, as the jobs list says a job's."""
    try:
        return targets_text(Targets.model_validate(template.get("targets") or {}))
    except ValidationError:  # stored under older bounds: its page says what is wrong
        return "—"


def row(public: SchedulePublic) -> dict[str, Any]:
    return {
        "s": public,
        "ref": ref(public),
        "timing": timing(public),
        "targets": targets(public.template),
        "last": public.recent[0] if public.recent else None,
    }


@router.get("/schedules")
def schedule_list(
    request: Request, who: VisitorDep, session: SessionDep, offset: Offset = 0
) -> Response:
    found, total = service.list_schedules(session=session, limit=PAGE_SIZE, offset=offset)
    rows = [row(service.to_public(session, s, recent=1)) for s in found]
    return page(
        request,
        "schedules.html",
        who,
        rows=rows,
        total=total,
        offset=offset,
        size=PAGE_SIZE,
    )


@router.get("/schedules/{ref}")
def schedule_page(
    request: Request, who: VisitorDep, session: SessionDep, schedule: ScheduleDep
) -> Response:
    public = service.to_public(session, schedule, recent=RECENT)
    metrics = offered(session=session, schedule=schedule)
    return page(request, "schedule.html", who, **row(public), metrics=metrics)


@router.post("/schedules/{ref}/pause")
def schedule_pause(
    who: OperatorDep, _: FormDep, session: SessionDep, schedule: ScheduleDep
) -> Response:
    service.set_enabled(
        session=session, schedule=schedule, enabled=False, admin=who.may(Role.admin)
    )
    log.info("schedule %s paused by %s", schedule.name, who.name)
    return redirect(f"/schedules/{ref(schedule)}")


@router.post("/schedules/{ref}/resume")
def schedule_resume(
    who: OperatorDep, _: FormDep, session: SessionDep, schedule: ScheduleDep
) -> Response:
    service.set_enabled(session=session, schedule=schedule, enabled=True, admin=who.may(Role.admin))
    log.info("schedule %s resumed by %s", schedule.name, who.name)
    return redirect(f"/schedules/{ref(schedule)}")


@router.post("/schedules/{ref}/run")
def schedule_run_now(
    who: OperatorDep,
    _: FormDep,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    schedule: ScheduleDep,
) -> Response:
    fired = service.run_now(
        session=session,
        settings=settings,
        dispatcher=dispatcher,
        schedule=schedule,
        admin=who.may(Role.admin),
    )
    log.info("schedule %s run now by %s: job %s", schedule.name, who.name, fired.job_id)
    return redirect(f"/schedules/{ref(schedule)}")


@router.post("/schedules/{ref}/delete")
def schedule_delete(
    who: OperatorDep, _: FormDep, session: SessionDep, schedule: ScheduleDep
) -> Response:
    name = schedule.name
    service.remove(session=session, schedule=schedule, admin=who.may(Role.admin))
    log.info("schedule %s deleted by %s", name, who.name)
    return redirect("/schedules")


@router.get("/schedules/{ref}/trend")
def schedule_trend_page(
    request: Request,
    who: VisitorDep,
    session: SessionDep,
    schedule: ScheduleDep,
    metric: str = Query(default="", max_length=256),
    host: list[str] = Query(default=[]),
    limit: int = Query(default=200, ge=1, le=2000),
) -> Response:
    """The metric over the schedule's slots, per host: `host` (repeated) picks hosts."""
    return schedule_trend.show(
        request,
        who,
        session=session,
        schedule=schedule,
        base=f"/schedules/{ref(schedule)}/trend",
        metric=metric,
        hosts=host[:MAX_HOSTS],
        limit=limit,
    )
