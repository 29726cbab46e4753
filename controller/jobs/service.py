"""Jobs: validate against the catalog, fan out one run per host, track and cancel them."""

from __future__ import annotations

import logging
import math
import uuid
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, selectinload

from controller.db import utcnow
from controller.dispatch import BROKER_DOWN, Dispatcher
from controller.errors import Forbidden, InvalidRequest, Unavailable
from controller.hosts import service as hosts_service
from controller.hosts.models import Host
from controller.jobs.models import Job, JobCreate, JobEvent, JobPublic, JobState, Run, RunPublic
from controller.settings import Settings
from node_agent.errors import BadParameter, UnknownProgram
from node_agent.programs import get_program
from node_agent.programs.spec import AUTO, RefusedField
from node_agent.protocol import RunState, TraceRequest

log = logging.getLogger(__name__)


def validate(job_in: JobCreate, *, settings: Settings, may_run_admin_only: bool) -> dict[str, Any]:
    """Check a job against this deployment's limits and the program's spec (`ProgramSpec.check`,
    which the agents run again); returns the validated parameters."""
    try:
        spec = get_program(job_in.program)
    except UnknownProgram as exc:
        raise InvalidRequest(exc.message, field="program") from None
    if spec.admin_only and not may_run_admin_only:
        raise Forbidden(f"the {spec.name} program needs the admin role", field="program")
    if job_in.duration_s > settings.max_duration_s:
        raise InvalidRequest(
            f"{job_in.duration_s:g}s is above the limit of {settings.max_duration_s:g}s",
            field="duration_s",
        )
    if job_in.interval_s is not None and job_in.interval_s > job_in.duration_s:
        raise InvalidRequest("the interval is longer than the duration", field="interval_s")
    try:
        return spec.check(job_in)
    except (BadParameter, RefusedField) as exc:
        raise InvalidRequest(exc.message, field=exc.field) from None


def check_budget(job_in: JobCreate, *, hosts: int, settings: Settings) -> None:
    """Refuse a job that could store more than the budget: hosts x snapshots x rows."""
    snapshots = 1 + (math.ceil(job_in.duration_s / job_in.interval_s) if job_in.interval_s else 0)
    rows = job_in.limits.max_rows
    cost = hosts * snapshots * rows
    if cost <= settings.job_budget_rows:
        return
    raise InvalidRequest(
        f"the job could store {cost:,} rows ({hosts} hosts x {snapshots} snapshots x {rows}"
        f" rows), above the budget of {settings.job_budget_rows:,} (FLEETTRACE_JOB_BUDGET_ROWS):"
        " use a longer interval, fewer hosts or a smaller limits.max_rows",
        field="interval_s" if job_in.interval_s else "limits.max_rows",
    )


def resolve_targets(*, session: Session, job_in: JobCreate) -> list[Host]:
    targets = job_in.targets
    if targets.hosts is not None:
        found = {h.name: h for h in hosts_service.list_hosts(session=session)}
        unknown = [n for n in targets.hosts if n not in found]
        if unknown:
            raise InvalidRequest(f"unknown hosts: {', '.join(unknown)}", field="targets.hosts")
        return [found[n] for n in dict.fromkeys(targets.hosts)]
    hosts = hosts_service.list_hosts(session=session, selector=targets.selector)
    if not hosts:
        field = "targets.selector" if targets.selector else "targets.all"
        raise InvalidRequest("no host matches the targets", field=field)
    return hosts


def unsupported_reason(
    host: Host, program: str, params: Mapping[str, Any] | None = None
) -> str | None:
    """Why a host cannot run a program (with `params`: the attach option they force), from
    the capabilities it reported; None if it can."""
    caps = host.capabilities
    if not caps:
        return None
    wanted = str((params or {}).get("attach", AUTO))
    for support in caps.get("programs", []):
        if support.get("program") != program:
            continue
        if not support.get("supported", True):
            return str(support.get("reason") or "unsupported on this host")
        lacks = (support.get("attach") or {}).get(wanted) if wanted != AUTO else None
        if lacks:
            return f"{program}: attach={wanted} fails on this host: {wanted} {lacks}"
    features = caps.get("features", {})
    if program == "custom" and not features.get("tracepoints", False):
        return "this host cannot load tracepoint programs"
    # An agent older than the program does not list it: judge by the features it reported.
    lacking = sorted(f.value for f in get_program(program).features if not features.get(f.value))
    if lacking:
        errors = caps.get("feature_errors", {})
        why = [f"{f}: {errors[f]}" for f in lacking if errors.get(f)]
        return f"needs {', '.join(lacking)}, which this host lacks" + (
            f" ({'; '.join(why)})" if why else ""
        )
    return None


def create(
    *,
    session: Session,
    settings: Settings,
    dispatcher: Dispatcher,
    job_in: JobCreate,
    created_by: str | None,
    may_run_admin_only: bool,
) -> Job:
    params = validate(job_in, settings=settings, may_run_admin_only=may_run_admin_only)
    hosts = resolve_targets(session=session, job_in=job_in)
    check_budget(job_in, hosts=len(hosts), settings=settings)
    now = utcnow()
    job = Job(
        id=str(uuid.uuid4()),
        program=job_in.program,
        params=params,
        scope=job_in.scope,
        limits=job_in.limits,
        targets=job_in.targets,
        duration_s=job_in.duration_s,
        interval_s=job_in.interval_s,
        source=job_in.source,
        maps=job_in.maps,
        created_by=created_by,
        created_at=now,
        state=JobState.pending.value,
        cancel_requested=False,
    )
    session.add(job)
    to_send: list[tuple[Host, Run]] = []
    with buffered_events(session):
        _add_runs(session, settings=settings, job=job, hosts=hosts, now=now, to_send=to_send)
        refresh_state(session=session, job=job)
        # Stamped before sending: once a task is out, ingest may be writing its run, and
        # writing the runs again here deadlocked against it on PostgreSQL (and queued behind
        # it on SQLite). Before the events' INSERT, which flushes the runs.
        queued_at = utcnow()
        for _, run in to_send:
            run.dispatched_at = queued_at
    session.commit()
    runs = {run.id: run for _, run in to_send}
    work: list[tuple[str, TraceRequest]] = []
    if to_send:
        # One request validated per job; each run's is a copy with its own id.
        request = trace_request(job, to_send[0][1])
        work = [(h.name, request.model_copy(update={"run_id": run.id})) for h, run in to_send]
    failed = dispatcher.send_all(work, expires_s=settings.task_expiry_s)
    unsent = [(runs[request.run_id], exc) for request, exc in failed]
    if unsent:
        _not_queued(session=session, job=job, unsent=unsent)
    log.info("job %s: %s on %d hosts", job.id, job.program, len(hosts))
    return job


def _add_runs(
    session: Session,
    *,
    settings: Settings,
    job: Job,
    hosts: list[Host],
    now: datetime,
    to_send: list[tuple[Host, Run]],
) -> None:
    """One run per host: pending (to send), or unsupported with the reason."""
    for host in hosts:
        run = Run(
            id=str(uuid.uuid4()),
            job=job,
            host_name=host.name,
            state=RunState.pending.value,
            created_at=now,
        )
        reason = unsupported_reason(host, job.program, job.params)
        if reason is not None:
            run.state = RunState.unsupported.value
            run.reason = reason
            run.finished_at = now
        else:
            run.expires_at = now + timedelta(seconds=settings.task_expiry_s)
            to_send.append((host, run))
        session.add(run)
        add_event(session, job_id=job.id, run=run, kind="state", payload=_run_state(run))


def _not_queued(*, session: Session, job: Job, unsent: list[tuple[Run, Exception]]) -> None:
    """Runs whose task never reached Redis end now, saying so, rather than expire as if their
    host were away."""
    for run, exc in unsent:
        reason = f"not queued: the broker is unavailable ({exc})"
        log.error("run %s (job %s) on %s: %s", run.id, job.id, run.host_name, reason)
        set_run_state(session=session, run=run, state=RunState.failed, reason=reason)
    refresh_state(session=session, job=job)
    session.commit()


def trace_request(job: Job, run: Run) -> TraceRequest:
    return TraceRequest(
        run_id=run.id,
        job_id=job.id,
        program=job.program,
        params=job.params,
        scope=job.scope,
        duration_s=job.duration_s,
        interval_s=job.interval_s,
        limits=job.limits,
        source=job.source,
        maps=job.maps,
    )


def _run_state(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "host": run.host_name,
        "state": run.state,
        "reason": run.reason,
        "error": run.error,
    }


def add_event(
    session: Session, *, job_id: str, run: Run | None, kind: str, payload: dict[str, Any]
) -> None:
    row = {
        "job_id": job_id,
        "run_id": run.id if run else None,
        "host_name": run.host_name if run else None,
        "kind": kind,
        "payload": payload,
    }
    buffer: list[dict[str, Any]] | None = session.info.get(_EVENT_BUFFER)
    if buffer is not None:
        buffer.append(row)
    else:
        session.add(JobEvent(**row))


_EVENT_BUFFER = "fleettrace.job_events"


@contextmanager
def buffered_events(session: Session) -> Iterator[None]:
    """Job events added inside are inserted at the end, in the order they were added, by one
    INSERT: a 1,000-host job's events are thousands of rows, each an ORM object otherwise."""
    if _EVENT_BUFFER in session.info:  # inside another: that one inserts them all, in order
        yield
        return
    buffer: list[dict[str, Any]] = []
    session.info[_EVENT_BUFFER] = buffer
    try:
        yield
    finally:
        session.info.pop(_EVENT_BUFFER, None)
    if buffer:
        session.execute(insert(JobEvent), buffer)


def refresh_state(
    *, session: Session, job: Job, run_states: Collection[str] | None = None
) -> JobState:
    """A job's state follows its runs' (`run_states`: the distinct states of its runs, when
    the caller has them without loading every run); when it becomes final, that is logged
    once."""
    if run_states is None:
        run_states = {r.state for r in job.runs}
    states = [RunState(state) for state in run_states]
    before = JobState(job.state)
    if not states or any(not s.final for s in states):
        new = JobState.running if any(s is RunState.running for s in states) else JobState.pending
        if before is JobState.running and new is JobState.pending:
            new = JobState.running
    elif job.cancel_requested:
        new = JobState.cancelled
    elif all(s is RunState.succeeded for s in states):
        new = JobState.succeeded
    elif any(s is RunState.succeeded for s in states):
        new = JobState.partial
    else:
        new = JobState.failed
    if new is not before:
        job.state = new.value
        # A job reopens when an expired run turns out to have started after all.
        job.finished_at = utcnow() if new.final else None
        if new.final:
            add_event(session, job_id=job.id, run=None, kind="job", payload={"state": new.value})
    return new


def set_run_state(
    *,
    session: Session,
    run: Run,
    state: RunState,
    reason: str | None = None,
    error: dict[str, Any] | None = None,
) -> bool:
    """Move a run to a new state if that is a legal step; False when it is not."""
    current = RunState(run.state)
    # `expired` is the controller's guess that the host never started; the host may prove it wrong.
    if current.final and current is not RunState.expired:
        return False
    if current is state:
        return False
    now = utcnow()
    run.state = state.value
    if reason is not None:
        run.reason = reason
    if error is not None:
        run.error = error
    if state is RunState.running and run.started_at is None:
        run.started_at = now
    if state.final:
        run.finished_at = now
    add_event(session, job_id=run.job_id, run=run, kind="state", payload=_run_state(run))
    return True


def get(*, session: Session, job_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id).options(selectinload(Job.runs)))


def list_jobs(
    *,
    session: Session,
    state: JobState | None = None,
    program: str | None = None,
    host: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Job], int]:
    query = select(Job)
    if state is not None:
        query = query.where(Job.state == state.value)
    if program is not None:
        query = query.where(Job.program == program)
    if host is not None:
        query = query.where(Job.id.in_(select(Run.job_id).where(Run.host_name == host)))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.options(selectinload(Job.runs))
        .order_by(Job.created_at.desc(), Job.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return list(rows), total


def cancel(
    *, session: Session, dispatcher: Dispatcher, job: Job, heartbeat_timeout_s: float
) -> Job:
    """Ask every unfinished run to stop; runs not started yet, or on a host that is away, end
    here and now (an away host would never answer)."""
    if JobState(job.state).final:
        return job  # a finished job keeps its state: cancelling it is a no-op
    job.cancel_requested = True
    now = utcnow()
    names = {run.host_name for run in job.runs}
    hosts = {h.name: h for h in session.scalars(select(Host).where(Host.name.in_(names)))}
    unsent: list[str] = []
    for run in job.runs:
        state = RunState(run.state)
        if state.final:
            continue
        try:
            dispatcher.request_cancel(host=run.host_name, run_id=run.id)
        except BROKER_DOWN as exc:
            log.warning("job %s: cannot send the cancel of run %s: %s", job.id, run.id, exc)
            unsent.append(run.host_name)
        if state is RunState.pending:
            set_run_state(
                session=session, run=run, state=RunState.cancelled, reason="cancelled before start"
            )
            continue
        host = hosts.get(run.host_name)
        if host is None or _away(host, timeout_s=heartbeat_timeout_s, now=now):
            last = host.last_heartbeat if host is not None else None
            seen = f"last heartbeat {last.isoformat(timespec='seconds')}" if last else "never seen"
            set_run_state(
                session=session,
                run=run,
                state=RunState.cancelled,
                reason=f"cancelled while {run.host_name} was offline ({seen}); results so far kept",
            )
    refresh_state(session=session, job=job)
    session.commit()
    log.info("job %s: cancel requested", job.id)
    busy = sorted({r.host_name for r in job.runs if not RunState(r.state).final} & set(unsent))
    if busy:
        raise Unavailable(
            f"the broker is unavailable: {', '.join(busy)} could not be told to stop"
            " (runs not started yet, or on hosts that are away, are cancelled); try again"
        )
    return job


def _away(host: Host, *, timeout_s: float, now: datetime) -> bool:
    return hosts_service.state(host, timeout_s=timeout_s, now=now) != "online"


def snapshot_counts(*, session: Session, job: Job) -> dict[str, int]:
    from controller.jobs.models import SnapshotRow

    rows = session.execute(
        select(SnapshotRow.run_id, func.count())
        .where(SnapshotRow.job_id == job.id)
        .group_by(SnapshotRow.run_id)
    ).all()
    return {run_id: int(n) for run_id, n in rows}


# Columns a job's and a run's public form take as they are.
_JOB_COLUMNS = (
    "id",
    "program",
    "params",
    "scope",
    "limits",
    "targets",
    "duration_s",
    "interval_s",
    "state",
    "created_by",
    "created_at",
    "finished_at",
)
_RUN_COLUMNS = ("id", "state", "reason", "error", "created_at", "started_at", "finished_at")


def _columns(row: object, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(row, name) for name in names}


def to_public(job: Job, *, snapshots: dict[str, int] | None = None) -> JobPublic:
    snapshots = snapshots or {}
    runs = [
        RunPublic(**_columns(r, _RUN_COLUMNS), host=r.host_name, snapshots=snapshots.get(r.id, 0))
        for r in job.runs
    ]
    counts = dict(Counter(r.state for r in job.runs))
    return JobPublic(**_columns(job, _JOB_COLUMNS), runs=runs, counts=counts)
