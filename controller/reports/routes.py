"""Routes for reports: one job's hosts against the fleet, and two jobs host by host."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy.orm import Session, sessionmaker

from controller.api.deps import SessionDep, Viewer
from controller.api.resources import JobDep, find_job
from controller.api.responses import AUTHENTICATED, errors, json_safe
from controller.errors import NotFound
from controller.hosts.models import NAME_PATTERN
from controller.jobs.models import Job
from controller.reports import exports, service, store
from controller.reports.fleet import ReportInput
from controller.reports.models import CompareReport, JobReport, SpeedscopeFile
from controller.reports.render_csv import render_csv
from controller.reports.render_html import render_html
from controller.reports.render_md import render_md

router = APIRouter(tags=["reports"], responses=AUTHENTICATED)


class ReportFormat(str, Enum):
    json = "json"
    md = "md"
    csv = "csv"
    html = "html"
    openmetrics = "openmetrics"
    folded = "folded"
    speedscope = "speedscope"


def digests_later(request: Request, tasks: BackgroundTasks) -> store.Later:
    """Digests a report made are stored after the answer is sent, in their own session."""
    sessions: sessionmaker[Session] = request.app.state.sessions

    def later(job_id: str, made: store.Made) -> None:
        tasks.add_task(store.save, sessions, job_id, made)

    return later


Later = Annotated[store.Later, Depends(digests_later)]


@router.get(
    "/v1/jobs/{job_id}/report",
    operation_id="get_job_report",
    response_model=JobReport | SpeedscopeFile,
    responses={
        **errors(404),
        200: {
            "content": {
                "text/markdown": {},
                "text/csv": {},
                "text/html": {},
                "application/openmetrics-text": {},
                "text/plain": {},
            }
        },
    },
)
def get_job_report(
    session: SessionDep,
    _: Viewer,
    job: JobDep,
    later: Later,
    format: ReportFormat = ReportFormat.json,
    top: int = Query(default=service.TOP, ge=1, le=1000),
    host: str | None = Query(
        default=None,
        pattern=NAME_PATTERN,
        description="folded: this host's stacks instead of the fleet's; "
        "html: the host of the differential flame graph",
    ),
) -> JobReport | Response:
    """Each host against the fleet: numbers, ranked outliers, one-host keys, missing hosts.

    Also as Markdown, CSV, a self-contained HTML page, OpenMetrics (histograms), folded stacks
    and speedscope JSON (one sampled profile per host).
    """
    return report_as(format, session=session, job=job, later=later, top=top, host=host)


def report_as(
    format: ReportFormat,
    *,
    session: Session,
    job: Job,
    later: store.Later,
    top: int = service.TOP,
    host: str | None = None,
) -> Response:
    """A job's report in one format (the API's report route and the console's downloads)."""
    if format in (ReportFormat.openmetrics, ReportFormat.folded, ReportFormat.speedscope):
        data = store.report_input(session=session, job=job, later=later)
        return _export(job, data, format, host)
    report, analysis = service.job_report_with_analysis(
        session=session, job=job, top=top, later=later
    )
    if format is ReportFormat.md:
        return PlainTextResponse(render_md(report), media_type="text/markdown; charset=utf-8")
    if format is ReportFormat.csv:
        return PlainTextResponse(render_csv(report), media_type="text/csv; charset=utf-8")
    if format is ReportFormat.html:
        page = render_html(report, analysis, top=top, diff_host=host)
        return Response(page, media_type="text/html; charset=utf-8")
    # Serialized here, once: returned as a model, FastAPI would validate it all over again.
    return Response(json_safe(report.model_dump_json()), media_type="application/json")


def _export(job: Job, data: ReportInput, format: ReportFormat, host: str | None) -> Response:
    """The formats other tools read."""
    if format is ReportFormat.openmetrics:
        return Response(exports.openmetrics(data), media_type=exports.OPENMETRICS_TYPE)
    if format is ReportFormat.folded:
        stacks = exports.stacks_of(data, host)
        if stacks is None:
            raise NotFound(f"no host {host} in job {job.id}")
        return PlainTextResponse(exports.folded(stacks))
    body = json_safe(exports.speedscope(data).model_dump_json(by_alias=True))
    return Response(body, media_type="application/json")


@router.get("/v1/reports/compare", operation_id="compare_jobs", responses=errors(404))
def compare_jobs(
    session: SessionDep,
    _: Viewer,
    later: Later,
    base: str = Query(description="the job before", min_length=1, max_length=64),
    other: str = Query(description="the job after", min_length=1, max_length=64),
) -> CompareReport:
    """Two jobs host by host: each metric's base and other value, delta and ratio."""
    a, b = (find_job(session=session, job_id=job_id) for job_id in (base, other))
    return service.compare(
        service.job_report(session=session, job=a, later=later),
        service.job_report(session=session, job=b, later=later),
    )
