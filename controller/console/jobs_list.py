"""Jobs: the list with its filters and pages, and the form that submits one."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from controller.api.deps import DispatcherDep, SessionDep, SettingsDep
from controller.api.resources import find_job
from controller.auth.models import Role
from controller.console.forms import errors_of, form_values, job_from_form, template_context
from controller.console.sessions import Visitor
from controller.console.web import FormDep, OperatorDep, PageError, VisitorDep, page, redirect
from controller.errors import ControllerError
from controller.hosts import service as hosts
from controller.jobs import service
from controller.jobs.models import Job, JobCreate, JobState, Targets
from node_agent.programs import catalog
from node_agent.protocol import RunState

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)
PAGE_SIZES = (20, 50, 100, 200)
_SHOWN_HOSTS = 3


def targets_text(targets: Targets) -> str:
    """'web-1, web-2 +3', 'role=web', 'all hosts'."""
    if targets.hosts is not None:
        more = len(targets.hosts) - _SHOWN_HOSTS
        return ", ".join(targets.hosts[:_SHOWN_HOSTS]) + (f" +{more}" if more > 0 else "")
    if targets.selector is not None:
        return ",".join(f"{k}={v}" for k, v in targets.selector.items())
    return "all hosts"


def row(job: Job) -> dict[str, Any]:
    counts = Counter(run.state for run in job.runs)
    return {
        "id": job.id,
        "program": job.program,
        "targets": targets_text(job.targets),
        "state": job.state,
        "counts": [(s.value, counts[s.value]) for s in RunState if counts[s.value]],
        "created_by": job.created_by,
        "created_at": job.created_at,
        "duration_s": job.duration_s,
        "interval_s": job.interval_s,
    }


def _state(text: str) -> JobState | None:
    if not text:
        return None
    try:
        return JobState(text)
    except ValueError:
        known = ", ".join(s.value for s in JobState)
        raise PageError(422, f"state: {text!r} is not one of {known}") from None


@router.get("/jobs")
def jobs(
    request: Request,
    who: VisitorDep,
    session: SessionDep,
    state: Annotated[str, Query(max_length=16)] = "",
    program: Annotated[str, Query(max_length=64)] = "",
    host: Annotated[str, Query(max_length=128)] = "",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Response:
    found, total = service.list_jobs(
        session=session,
        state=_state(state),
        program=program or None,
        host=host or None,
        limit=limit,
        offset=offset,
    )
    filters = {k: v for k, v in (("state", state), ("program", program), ("host", host)) if v}

    def at(start: int) -> str:
        return "/jobs?" + urlencode({**filters, "limit": limit, "offset": max(0, start)})

    return page(
        request,
        "jobs.html",
        who,
        rows=[row(j) for j in found],
        total=total,
        filters=filters,
        states=[s.value for s in JobState],
        programs=list(catalog()),
        limit=limit,
        offset=offset,
        sizes=sorted({*PAGE_SIZES, limit}),
        previous=at(offset - limit) if offset > 0 else None,
        next=at(offset + limit) if offset + limit < total else None,
    )


def _form_page(
    request: Request,
    who: Visitor,
    session: Session,
    *,
    values: Mapping[str, Any],
    errors: Mapping[str, str],
    status: int = 200,
) -> Response:
    known = hosts.list_hosts(session=session)
    labels: dict[str, set[str]] = {}
    for h in known:
        for key, value in h.labels.items():
            labels.setdefault(key, set()).add(value)
    context = template_context(
        values=dict(values),
        errors=errors,
        hosts=[h.name for h in known],
        labels={k: sorted(v) for k, v in labels.items()},
        may_run_admin_only=who.may(Role.admin),
    )
    return page(request, "job_new.html", who, status=status, **context)


def template_of(job: Job) -> JobCreate:
    """What a job ran, as the form's starting point for running it again."""
    fields = ("program", "params", "scope", "limits", "targets", "duration_s", "interval_s")
    return JobCreate.model_validate(
        {name: getattr(job, name) for name in (*fields, "source", "maps")}
    )


@router.get("/jobs/new")
def new_job(
    request: Request,
    who: OperatorDep,
    session: SessionDep,
    again: Annotated[str, Query(alias="from", max_length=36)] = "",
) -> Response:
    # The query fills the form: a shared link, the program select asking for its fields, or
    # `from=<job id>` to run a job again.
    values: Mapping[str, Any] = request.query_params
    if again:
        values = form_values(template_of(find_job(session=session, job_id=again)))
    return _form_page(request, who, session, values=values, errors={})


@router.post("/jobs/new")
def submit_job(
    request: Request,
    who: OperatorDep,
    form: FormDep,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
) -> Response:
    values = {k: v for k, v in form.items() if k != "csrf" and isinstance(v, str)}
    job_in, errors = job_from_form(values)
    status = 422
    if job_in is not None:
        try:
            job = service.create(
                session=session,
                settings=settings,
                dispatcher=dispatcher,
                job_in=job_in,
                created_by=who.name,
                may_run_admin_only=who.may(Role.admin),
            )
        except ControllerError as exc:
            session.rollback()
            errors, status = errors_of(exc), exc.status
        else:
            return redirect(f"/jobs/{job.id}")
    log.info("job form from %s refused on %r", who.name, sorted(errors))
    return _form_page(request, who, session, values=values, errors=errors, status=status)
