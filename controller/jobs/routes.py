"""Routes for jobs: submit, list, show, cancel, results, live events."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import Response, StreamingResponse

from controller.api.deps import DispatcherDep, Operator, SessionDep, SettingsDep, Viewer
from controller.api.params import IdPath, Offset
from controller.api.resources import JobDep, find_job
from controller.api.responses import AUTHENTICATED, ModelResponse, errors
from controller.auth.models import Role
from controller.hosts.models import NAME_PATTERN
from controller.jobs import locks, service
from controller.jobs.models import JobCreate, JobPublic, JobResults, JobsPublic, JobState
from controller.jobs.results import job_results
from controller.jobs.streams import open_stream

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=AUTHENTICATED)


@router.post(
    "",
    operation_id="create_job",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
)
def create_job(
    job_in: JobCreate,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    token: Operator,
) -> Response:
    """Start a trace on the target hosts: one run per host."""
    job = service.create(
        session=session,
        settings=settings,
        dispatcher=dispatcher,
        job_in=job_in,
        created_by=token.name,
        may_run_admin_only=Role(token.role).allows(Role.admin),
    )
    return ModelResponse(service.to_public(job), status_code=status.HTTP_201_CREATED)


@router.get("", operation_id="list_jobs")
def list_jobs(
    session: SessionDep,
    _: Viewer,
    state: JobState | None = None,
    program: str | None = Query(default=None, max_length=64),
    host: str | None = Query(default=None, pattern=NAME_PATTERN),
    limit: int = Query(default=50, ge=1, le=500),
    offset: Offset = 0,
) -> JobsPublic:
    """List jobs, newest first, filtered by state, program or host."""
    jobs, total = service.list_jobs(
        session=session, state=state, program=program, host=host, limit=limit, offset=offset
    )
    return JobsPublic(data=[service.to_public(j) for j in jobs], count=total)


@router.get("/{job_id}", operation_id="get_job", responses=errors(404), response_model=JobPublic)
def get_job(session: SessionDep, _: Viewer, job: JobDep) -> Response:
    """Show a job with its per-host runs."""
    snapshots = service.snapshot_counts(session=session, job=job)
    return ModelResponse(service.to_public(job, snapshots=snapshots))


@router.post("/{job_id}/cancel", operation_id="cancel_job", responses=errors(404, 503))
def cancel_job(
    session: SessionDep,
    dispatcher: DispatcherDep,
    settings: SettingsDep,
    _: Operator,
    job: JobDep,
) -> JobPublic:
    """Stop a job's runs; what they gathered so far is kept."""
    service.cancel(
        session=session,
        dispatcher=dispatcher,
        job=locks.lock_job(session, job),  # another controller's ingest may end runs meanwhile
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
    )
    return service.to_public(job)


@router.get(
    "/{job_id}/results",
    operation_id="get_job_results",
    responses=errors(404),
    response_model=JobResults,
)
def get_job_results(session: SessionDep, _: Viewer, job: JobDep) -> Response:
    """Each host's latest cumulative results, and the fleet merge."""
    return ModelResponse(job_results(session=session, job=job))


@router.get(
    "/{job_id}/events",
    operation_id="stream_job_events",
    response_class=StreamingResponse,
    responses={
        **errors(404),
        200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"},
        429: {
            "description": "this token has as many event streams open in this controller as"
            " FLEETTRACE_SSE_STREAMS_PER_TOKEN allows (default 32)"
        },
    },
)
def job_events(
    job_id: IdPath, request: Request, session: SessionDep, token: Viewer
) -> StreamingResponse:
    """Server-Sent Events: state changes and snapshots from the job's start, then live."""
    # Looked up here, not by JobDep: a dependency's step would hold the connection until this
    # one runs, and a stream must hold none (each poll opens and closes its own).
    token_id = token.id
    find_job(session=session, job_id=job_id)
    session.close()
    return open_stream(request, job_id=job_id, holder=token_id)
