"""A job's page: its hosts live over the job's events, then its report inline; cancel; compare.

Every number here comes from the services the API's job and report routes call; the report's
sections are render_html's, so the page and the downloaded HTML never disagree.
"""

from __future__ import annotations

import logging
import uuid
from enum import Enum
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from markupsafe import Markup
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controller.api.deps import DispatcherDep, SessionDep, SettingsDep
from controller.api.resources import find_job
from controller.console.web import HEADERS, FormDep, OperatorDep, VisitorDep, page, redirect
from controller.hosts.models import NAME_PATTERN
from controller.jobs import locks
from controller.jobs import service as jobs
from controller.jobs.models import Job, JobEvent
from controller.jobs.streams import open_stream
from controller.reports import service as reports
from controller.reports.analysis import human
from controller.reports.render_html import report_sections
from controller.reports.routes import Later, ReportFormat, report_as

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

# The differential flame graph's host (and the folded download's), as the API's report takes it.
DiffHost = Annotated[str | None, Query(pattern=NAME_PATTERN, max_length=128)]
JobQuery = Annotated[str, Query(max_length=64)]


class Download(str, Enum):
    """The report files a job page offers."""

    html = "html"
    csv = "csv"
    openmetrics = "openmetrics"
    folded = "folded"
    speedscope = "speedscope"


FILE_EXT = {
    Download.html: "html",
    Download.csv: "csv",
    Download.openmetrics: "om.txt",
    Download.folded: "folded.txt",
    Download.speedscope: "speedscope.json",
}


def _last_event(session: Session, job_id: str) -> int:
    """The job's newest event id: the page shows what is stored up to it, the stream the rest.

    Read before the job and its runs, so an event the page missed is always streamed (one it
    already shows may come again: applying it twice changes nothing)."""
    return int(session.scalar(select(func.max(JobEvent.id)).where(JobEvent.job_id == job_id)) or 0)


def _report(session: Session, job: Job, later: Later, diff_host: str | None) -> dict[str, Any]:
    report, analysis = reports.job_report_with_analysis(session=session, job=job, later=later)
    parts = report_sections(report, analysis, diff_host=diff_host)
    return {
        # render_html escaped every text it put in these (hostile names, keys, symbols).
        "parts": [(kind, Markup(html)) for kind, html in parts],
        "report": report,
        "stack_hosts": sorted(h.host for h in report.hosts if analysis.stacks_of(h.host)),
        "diff_host": diff_host,
    }


@router.get("/jobs/compare")
def compare(
    request: Request,
    who: VisitorDep,
    session: SessionDep,
    later: Later,
    a: JobQuery = "",
    b: JobQuery = "",
) -> Response:
    if not a or not b:
        return page(request, "compare.html", who, a=a, b=b, found=None, human=human)
    base, other = (find_job(session=session, job_id=job_id.strip()) for job_id in (a, b))
    found = reports.compare(
        reports.job_report(session=session, job=base, later=later),
        reports.job_report(session=session, job=other, later=later),
    )
    return page(request, "compare.html", who, a=a, b=b, found=found, human=human)


# Job ids are uuids: a `uuid` path never takes /jobs/new or /jobs/compare for a job's id,
# whichever order the console's routers are mounted in.
@router.get("/jobs/{job_id:uuid}")
def job_page(
    request: Request,
    who: VisitorDep,
    session: SessionDep,
    later: Later,
    job_id: uuid.UUID,
    host: DiffHost = None,
) -> Response:
    after = _last_event(session, str(job_id))
    job = find_job(session=session, job_id=str(job_id))
    shown = jobs.to_public(job, snapshots=jobs.snapshot_counts(session=session, job=job))
    final = shown.state.final
    report = _report(session, job, later, host) if final else None
    return page(request, "job.html", who, job=shown, after=after, final=final, report=report)


@router.get("/jobs/{job_id:uuid}/report")
def job_report(
    request: Request,
    who: VisitorDep,
    session: SessionDep,
    later: Later,
    job_id: uuid.UUID,
    host: DiffHost = None,
) -> Response:
    """The report as a fragment (section#report), for the job page to insert when it ends."""
    job = find_job(session=session, job_id=str(job_id))
    shown = jobs.to_public(job)
    report = _report(session, job, later, host)
    return page(request, "job_report.html", who, job=shown, report=report)


@router.get("/jobs/{job_id:uuid}/download/{kind}")
def download(
    who: VisitorDep,
    session: SessionDep,
    later: Later,
    job_id: uuid.UUID,
    kind: Download,
    host: DiffHost = None,
) -> Response:
    job = find_job(session=session, job_id=str(job_id))
    answer = report_as(ReportFormat(kind.value), session=session, job=job, later=later, host=host)
    answer.headers.update(HEADERS)
    answer.headers["Content-Disposition"] = (
        f'attachment; filename="fleettrace-{job.id}.{FILE_EXT[kind]}"'
    )
    return answer


@router.get("/jobs/{job_id:uuid}/events")
def job_events(
    request: Request,
    who: VisitorDep,
    session: SessionDep,
    job_id: uuid.UUID,
    after: int = Query(default=0, ge=0, le=2**62),
) -> Response:
    """The API's live events (same hub, same per-token stream limit), for the session."""
    find_job(session=session, job_id=str(job_id))
    session.close()  # a stream holds no connection: each poll opens its own
    return open_stream(request, job_id=str(job_id), holder=who.token_id, after=after)


@router.post("/jobs/{job_id:uuid}/cancel")
def cancel_job(
    who: OperatorDep,
    _: FormDep,
    session: SessionDep,
    dispatcher: DispatcherDep,
    settings: SettingsDep,
    job_id: uuid.UUID,
) -> Response:
    """Stop a job's runs (a finished job is left as it is), then back to its page."""
    job = find_job(session=session, job_id=str(job_id))
    jobs.cancel(
        session=session,
        dispatcher=dispatcher,
        job=locks.lock_job(session, job),  # another controller's ingest may end runs meanwhile
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
    )
    log.info("job %s: cancel asked from the console by %s", job.id, who.name)
    return redirect(f"/jobs/{job.id}")
