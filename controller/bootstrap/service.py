"""Bootstrap runs from the API's side: create them, queue them, show them."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controller.bootstrap.models import (
    BatchCreate,
    BatchPublic,
    BootstrapBatch,
    BootstrapOptions,
    BootstrapRun,
    BootstrapRunPublic,
    BootstrapStep,
    RunKind,
    RunState,
    StepStatus,
)
from controller.bootstrap.runner import step_names
from controller.db import utcnow
from controller.errors import Conflict, ControllerError, InvalidRequest, NotFound
from controller.hosts import service as hosts_service
from controller.hosts.models import Host

log = logging.getLogger(__name__)
# A run still pending or running after this was lost (its worker died): it blocks no more.
STALE_AFTER = timedelta(hours=3)
ACTIVE_STATES = (RunState.pending.value, RunState.running.value)


class QueueUnavailable(ControllerError):
    status = 503


class BootstrapQueue(Protocol):
    """Where runs go to be carried out (Celery on the controller queue; inline in tests)."""

    def send_run(self, *, run_id: str, kind: RunKind) -> None: ...

    def send_batch(self, *, batch_id: str) -> None: ...


def latest_run(*, session: Session, host_name: str) -> BootstrapRun | None:
    return session.scalar(
        select(BootstrapRun)
        .where(BootstrapRun.host_name == host_name)
        .order_by(BootstrapRun.created_at.desc(), BootstrapRun.id)
        .limit(1)
    )


def latest_runs(*, session: Session) -> dict[str, BootstrapRun]:
    """Every host's latest run, by host name, in one query (a page of 1,000 hosts)."""
    newest = (
        select(BootstrapRun.host_name, func.max(BootstrapRun.created_at).label("at"))
        .group_by(BootstrapRun.host_name)
        .subquery()
    )
    runs = session.scalars(
        select(BootstrapRun)
        .join(
            newest,
            (BootstrapRun.host_name == newest.c.host_name)
            & (BootstrapRun.created_at == newest.c.at),
        )
        .order_by(BootstrapRun.id)
    )
    return {run.host_name: run for run in runs}


def get_run(*, session: Session, run_id: str) -> BootstrapRun | None:
    return session.get(BootstrapRun, run_id)


def get_batch(*, session: Session, batch_id: str) -> BootstrapBatch | None:
    return session.get(BootstrapBatch, batch_id)


def active_run(*, session: Session, host_name: str) -> BootstrapRun | None:
    """The host's unfinished run, if any; one that went stale is failed on the way."""
    runs = session.scalars(
        select(BootstrapRun)
        .where(BootstrapRun.host_name == host_name)
        .where(BootstrapRun.state.in_(ACTIVE_STATES))
    ).all()
    for run in runs:
        if utcnow() - run.created_at > STALE_AFTER:
            run.state = RunState.failed.value
            run.error = "abandoned: no worker finished it"
            run.finished_at = utcnow()
        else:
            return run
    return None


def _new_run(
    *,
    session: Session,
    host: Host,
    kind: RunKind,
    options: BootstrapOptions,
    created_by: str | None,
    batch_id: str | None = None,
) -> BootstrapRun:
    run = BootstrapRun(
        id=str(uuid.uuid4()),
        host_name=host.name,
        kind=kind.value,
        batch_id=batch_id,
        state=RunState.pending.value,
        options=options.model_dump(mode="json", exclude_defaults=True),
        created_by=created_by,
        created_at=utcnow(),
    )
    run.steps = [
        BootstrapStep(position=i, name=name, status=StepStatus.pending.value, output="")
        for i, name in enumerate(step_names(kind))
    ]
    session.add(run)
    return run


def _check_ready(session: Session, hosts: list[Host]) -> None:
    no_address = [h.name for h in hosts if not h.address]
    if no_address:
        raise InvalidRequest(
            f"no address to connect to: {', '.join(no_address)} (set one with PATCH)",
            field="address",
        )
    busy = [h.name for h in hosts if active_run(session=session, host_name=h.name) is not None]
    if busy:
        raise Conflict(f"a bootstrap or uninstall is already under way on {', '.join(busy)}")


def _fail_unqueued(session: Session, runs: list[BootstrapRun], exc: Exception) -> None:
    for run in runs:
        run.state = RunState.failed.value
        run.error = "could not be queued: the controller's broker is unreachable"
        run.finished_at = utcnow()
    session.commit()
    log.error("bootstrap: cannot queue %d runs: %s", len(runs), exc)
    raise QueueUnavailable("cannot queue the bootstrap: the broker is unreachable") from None


def start(
    *,
    session: Session,
    queue: BootstrapQueue,
    host_name: str,
    kind: RunKind,
    options: BootstrapOptions,
    created_by: str | None,
) -> BootstrapRun:
    """Create a run for one host and queue it."""
    host = hosts_service.get(session=session, name=host_name)
    if host is None:
        raise NotFound(f"no host {host_name!r}")
    _check_ready(session, [host])
    run = _new_run(session=session, host=host, kind=kind, options=options, created_by=created_by)
    session.commit()
    try:
        queue.send_run(run_id=run.id, kind=kind)
    except Exception as exc:
        _fail_unqueued(session, [run], exc)
    return run


def _batch_hosts(session: Session, batch_in: BatchCreate) -> list[Host]:
    if batch_in.hosts is not None:
        names = list(dict.fromkeys(batch_in.hosts))
        found = {h.name: h for h in session.scalars(select(Host).where(Host.name.in_(names)))}
        unknown = [n for n in names if n not in found]
        if unknown:
            raise InvalidRequest(f"no such hosts: {', '.join(unknown)}", field="hosts")
        return [found[n] for n in names]
    hosts = hosts_service.list_hosts(session=session, selector=batch_in.selector)
    if not hosts:
        raise InvalidRequest("no host matches the selector", field="selector")
    return hosts


def start_batch(
    *, session: Session, queue: BootstrapQueue, batch_in: BatchCreate, created_by: str | None
) -> BootstrapBatch:
    """Create one run per host under a batch, and queue the batch (it starts them in turn)."""
    hosts = _batch_hosts(session, batch_in)
    _check_ready(session, hosts)
    batch = BootstrapBatch(
        id=str(uuid.uuid4()),
        parallel=batch_in.parallel,
        max_failures=batch_in.max_failures,
        created_by=created_by,
        created_at=utcnow(),
    )
    session.add(batch)
    runs = [
        _new_run(
            session=session,
            host=host,
            kind=RunKind.bootstrap,
            options=batch_in.options,
            created_by=created_by,
            batch_id=batch.id,
        )
        for host in hosts
    ]
    session.commit()
    try:
        queue.send_batch(batch_id=batch.id)
    except Exception as exc:
        _fail_unqueued(session, runs, exc)
    session.refresh(batch)
    return batch


def to_public(run: BootstrapRun) -> BootstrapRunPublic:
    return BootstrapRunPublic.model_validate(run)


def batch_to_public(batch: BootstrapBatch) -> BatchPublic:
    return BatchPublic.model_validate(batch)
