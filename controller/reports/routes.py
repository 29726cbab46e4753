"""Routes for reports: one job's hosts against the fleet, and two jobs host by host."""

from __future__ import annotations

from enum import Enum

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy.orm import Session

from controller.api.deps import SessionDep, Viewer
from controller.api.params import IdPath
from controller.api.responses import AUTHENTICATED, errors, json_safe
from controller.hosts.models import NAME_PATTERN
from controller.jobs import service as jobs
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


def _job(session: Session, job_id: str) -> Job:
    job = jobs.get(session=session, job_id=job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return job


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
    job_id: IdPath,
    session: SessionDep,
    _: Viewer,
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
    job = _job(session, job_id)
    if format in (ReportFormat.openmetrics, ReportFormat.folded, ReportFormat.speedscope):
        with service.gc_paused():
            return _export(job, store.report_input(session=session, job=job), format, host)
    report, analysis = service.job_report_with_analysis(session=session, job=job, top=top)
    if format is ReportFormat.md:
        return PlainTextResponse(render_md(report), media_type="text/markdown; charset=utf-8")
    if format is ReportFormat.csv:
        return PlainTextResponse(render_csv(report), media_type="text/csv; charset=utf-8")
    if format is ReportFormat.html:
        with service.gc_paused():
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
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no host {host} in job {job.id}")
        return PlainTextResponse(exports.folded(stacks))
    body = json_safe(exports.speedscope(data).model_dump_json(by_alias=True))
    return Response(body, media_type="application/json")


@router.get("/v1/reports/compare", operation_id="compare_jobs", responses=errors(404))
def compare_jobs(
    session: SessionDep,
    _: Viewer,
    base: str = Query(description="the job before", min_length=1, max_length=64),
    other: str = Query(description="the job after", min_length=1, max_length=64),
) -> CompareReport:
    """Two jobs host by host: each metric's base and other value, delta and ratio."""
    a = service.job_report(session=session, job=_job(session, base))
    b = service.job_report(session=session, job=_job(session, other))
    return service.compare(a, b)
