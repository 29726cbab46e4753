"""The audit log's one route: read it (admin). No route edits or deletes a record."""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Query

from controller.api.deps import Admin, SessionDep
from controller.audit import service
from controller.audit.models import AuditRecordPublic, AuditRecordsPublic
from controller.errors import InvalidRequest

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("", operation_id="list_audit_records")
def list_audit_records(
    session: SessionDep,
    _: Admin,
    actor: str | None = Query(default=None, max_length=128, description="token or host name"),
    action: str | None = Query(
        default=None, max_length=64, description="operation id; a trailing * matches a prefix"
    ),
    host: str | None = Query(default=None, max_length=128, description="the host concerned"),
    since: datetime | None = Query(default=None, description="at or after (ISO 8601)"),
    until: datetime | None = Query(default=None, description="before (ISO 8601)"),
    limit: int = Query(default=100, ge=1, le=1000),
    offset: int = Query(default=0, ge=0, le=1_000_000),
) -> AuditRecordsPublic:
    """Audit records, newest first, filtered by actor, action, host and time."""
    since, until = _utc(since), _utc(until)
    if since is not None and until is not None and until <= since:
        raise InvalidRequest("must be after since", loc=("query", "until"))
    records, total = service.list_records(
        session=session,
        actor=actor,
        action=action,
        host=host,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )
    data = [AuditRecordPublic.model_validate(r, from_attributes=True) for r in records]
    return AuditRecordsPublic(data=data, count=total)


def _utc(moment: datetime | None) -> datetime | None:
    """A time without a zone is UTC, as every time the API answers with."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment
