"""Routes for jobs: submit, list, show, cancel, results, live events."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse

from controller.api.deps import DispatcherDep, Operator, SessionDep, SettingsDep, Viewer
from controller.auth.models import Role
from controller.jobs import service
from controller.jobs.events import stream_job_events
from controller.jobs.models import JobCreate, JobPublic, JobResults, JobsPublic, JobState
from controller.jobs.results import job_results

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post("", operation_id="create_job", status_code=status.HTTP_201_CREATED)
def create_job(
    job_in: JobCreate,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    token: Operator,
) -> JobPublic:
    """Start a trace on the target hosts: one run per host."""
    job = service.create(
        session=session,
        settings=settings,
        dispatcher=dispatcher,
        job_in=job_in,
        created_by=token.name,
        may_run_custom=Role(token.role).allows(Role.admin),
    )
    return service.to_public(job)


@router.get("", operation_id="list_jobs")
def list_jobs(
    session: SessionDep,
    _: Viewer,
    state: JobState | None = None,
    program: str | None = None,
    host: str | None = None,
    limit: int = Query(default=50, ge=1, le=500),
    offset: int = Query(default=0, ge=0),
) -> JobsPublic:
    """List jobs, newest first, filtered by state, program or host."""
    jobs, total = service.list_jobs(
        session=session, state=state, program=program, host=host, limit=limit, offset=offset
    )
    return JobsPublic(data=[service.to_public(j) for j in jobs], count=total)


@router.get("/{job_id}", operation_id="get_job")
def get_job(job_id: str, session: SessionDep, _: Viewer) -> JobPublic:
    """Show a job with its per-host runs."""
    job = service.get(session=session, job_id=job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return service.to_public(job, snapshots=service.snapshot_counts(session=session, job=job))


@router.post("/{job_id}/cancel", operation_id="cancel_job")
def cancel_job(
    job_id: str, session: SessionDep, dispatcher: DispatcherDep, settings: SettingsDep, _: Operator
) -> JobPublic:
    """Stop a job's runs; what they gathered so far is kept."""
    job = service.get(session=session, job_id=job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    service.cancel(
        session=session,
        dispatcher=dispatcher,
        job=job,
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
    )
    return service.to_public(job)


@router.get("/{job_id}/results", operation_id="get_job_results")
def get_job_results(job_id: str, session: SessionDep, _: Viewer) -> JobResults:
    """Each host's latest cumulative results, and the fleet merge."""
    job = service.get(session=session, job_id=job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return job_results(session=session, job=job)


@router.get(
    "/{job_id}/events",
    operation_id="stream_job_events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
)
def job_events(job_id: str, request: Request, session: SessionDep, _: Viewer) -> StreamingResponse:
    """Server-Sent Events: state changes and snapshots from the job's start, then live."""
    if service.get(session=session, job_id=job_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    last = request.headers.get("last-event-id", "0")
    after = int(last) if last.isdigit() else 0
    return StreamingResponse(
        stream_job_events(request, job_id=job_id, after=after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
