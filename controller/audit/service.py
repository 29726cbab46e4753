"""Audit records: write one, list them, prune past the retention. Nothing edits a record."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from controller.audit.models import SOURCE_AGENT, SOURCE_API, AuditRecord
from controller.audit.summary import clean_text
from controller.db import utcnow
from controller.jobs.models import Run

log = logging.getLogger(__name__)
PRUNE_BATCH = 500


def record_call(
    *,
    session: Session,
    actor: str | None,
    role: str | None,
    action: str,
    method: str,
    path: str,
    objects: dict[str, Any],
    summary: dict[str, Any],
    client: str | None,
    status: int,
) -> AuditRecord:
    """One API call's record (added to the session; the caller commits)."""
    host = objects.get("host")
    hosts = objects.get("hosts")
    if host is None and isinstance(hosts, list) and len(hosts) == 1:
        host = hosts[0]  # a job or a bootstrap of one host is about that host
    record = AuditRecord(
        source=SOURCE_API,
        actor=actor,
        role=role,
        action=action[:64],
        method=method[:8],
        path=path[:512],
        host=host if isinstance(host, str) else None,
        objects=objects,
        summary=summary,
        client=client[:64] if client else None,
        status=status,
    )
    session.add(record)
    return record


def record_agent_event(
    session: Session,
    *,
    host: str,
    action: str,
    detail: str = "",
    run_id: str | None = None,
) -> AuditRecord:
    """An agent's refusal (or anything else a host did that must be on record), by that host.

    `host` is who sent it (the stream it came on), `action` e.g. `agent.refused.replay`.
    Added to the session; the caller commits (ingest: with its batch).
    """
    objects: dict[str, Any] = {"host": host[:128]}
    if run_id:
        objects["run"] = run_id[:128]
        run = session.get(Run, run_id)
        if run is not None and run.host_name == host:  # a host names only its own runs' jobs
            objects["job"] = run.job_id
    record = AuditRecord(
        source=SOURCE_AGENT,
        actor=host[:128],
        role=SOURCE_AGENT,
        action=action[:64],
        host=host[:128],
        objects=objects,
        summary={"detail": clean_text(detail)} if detail else {},
    )
    session.add(record)
    log.info("audit: host %s %s (run %s)", host, action, run_id or "-")
    return record


def list_records(
    *,
    session: Session,
    actor: str | None = None,
    action: str | None = None,
    host: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[AuditRecord], int]:
    """Records newest first; `action` ending in `*` matches a prefix (`agent.refused.*`)."""
    query = select(AuditRecord)
    if actor is not None:
        query = query.where(AuditRecord.actor == actor)
    if action is not None:
        if action.endswith("*"):
            prefix = action[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(AuditRecord.action.like(prefix + "%", escape="\\"))
        else:
            query = query.where(AuditRecord.action == action)
    if host is not None:
        query = query.where(AuditRecord.host == host)
    if since is not None:
        query = query.where(AuditRecord.at >= since)
    if until is not None:
        query = query.where(AuditRecord.at < until)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(AuditRecord.at.desc(), AuditRecord.id.desc()).limit(limit).offset(offset)
    ).all()
    return list(rows), total


def prune(
    *, session: Session, older_than: timedelta, now: datetime | None = None, batches: int = 20
) -> int:
    """Delete records past the retention, PRUNE_BATCH at a time (short locks), at most
    `batches` batches per call; returns how many went."""
    cutoff = (now or utcnow()) - older_than
    removed = 0
    for _ in range(batches):
        ids = session.scalars(
            select(AuditRecord.id)
            .where(AuditRecord.at < cutoff)
            .order_by(AuditRecord.id)
            .limit(PRUNE_BATCH)
        ).all()
        if not ids:
            break
        session.execute(delete(AuditRecord).where(AuditRecord.id.in_(ids)))
        session.commit()
        removed += len(ids)
        if len(ids) < PRUNE_BATCH:
            break
    if removed:
        log.info("audit: pruned %d records older than %s", removed, cutoff.isoformat())
    return removed
