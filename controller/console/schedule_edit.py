"""Making and editing a schedule in the console: the form, and the same service functions as
`POST /v1/schedules` and `PATCH /v1/schedules/{id}`, then 303 to the schedule's page.

Its router comes before console/schedules.py's in mount.ROUTERS: `/schedules/new` is a page,
not a schedule named "new".
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response

from controller.api.deps import SessionDep, SettingsDep
from controller.auth.models import Role
from controller.console import schedule_form
from controller.console.schedules import ScheduleDep, ref
from controller.console.web import FormDep, OperatorDep, redirect
from controller.errors import ControllerError
from controller.jobs.models import JobCreate
from controller.schedules import service
from controller.schedules.models import ScheduleCreate, ScheduleUpdate

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

NEW = {"time_zone": "UTC", "misfire_grace": "1m", "enabled": "on"}


@router.get("/schedules/new")
def schedule_new(request: Request, who: OperatorDep, session: SessionDep) -> Response:
    return schedule_form.show(request, who, session, values=NEW, template=None)


@router.post("/schedules/new")
def schedule_create(
    request: Request,
    who: OperatorDep,
    form: FormDep,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    read = schedule_form.read_create(form)
    status = 422
    if read.ok and isinstance(read.body, ScheduleCreate):
        try:
            made = service.create(
                session=session,
                settings=settings,
                schedule_in=read.body,
                created_by=who.name,
                admin=who.may(Role.admin),
            )
        except ControllerError as exc:
            session.rollback()
            read.refused(exc)
            status = exc.status
        else:
            log.info("schedule %s created by %s in the console", made.name, who.name)
            return redirect(f"/schedules/{ref(made)}")
    return schedule_form.show(
        request, who, session, values=form, template=form, read=read, status=status
    )


@router.get("/schedules/{ref}/edit")
def schedule_edit_form(
    request: Request, who: OperatorDep, session: SessionDep, schedule: ScheduleDep
) -> Response:
    read = schedule_form.Read()
    template: JobCreate | None = None
    try:
        template = service.stored_template(schedule)
    except ControllerError as exc:  # stored under older bounds: say so, start afresh
        read.refused(exc)
    values = schedule_form.stored_values(schedule)
    return schedule_form.show(
        request,
        who,
        session,
        values=values,
        template=template,
        read=read,
        to=(schedule, ref(schedule)),
    )


@router.post("/schedules/{ref}/edit")
def schedule_edit(
    request: Request,
    who: OperatorDep,
    form: FormDep,
    session: SessionDep,
    settings: SettingsDep,
    schedule: ScheduleDep,
) -> Response:
    read = schedule_form.read_update(form, schedule)
    status = 422
    if read.ok and isinstance(read.body, ScheduleUpdate):
        try:
            service.update_schedule(
                session=session,
                settings=settings,
                schedule=schedule,
                update_in=read.body,
                admin=who.may(Role.admin),
            )
        except ControllerError as exc:
            session.rollback()
            read.refused(exc)
            status = exc.status
        else:
            log.info("schedule %s changed by %s in the console", schedule.name, who.name)
            return redirect(f"/schedules/{ref(schedule)}")
    values = {**form, "name": schedule.name, "continuous": "on" if schedule.continuous else ""}
    return schedule_form.show(
        request,
        who,
        session,
        values=values,
        template=form,
        read=read,
        status=status,
        to=(schedule, ref(schedule)),
    )
