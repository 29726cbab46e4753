"""Ingest's one route: the dead letters, newest first (admin: they hold what hosts sent)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from controller.api.deps import Admin, SessionDep
from controller.api.params import Offset
from controller.api.responses import AUTHENTICATED
from controller.hosts.models import NAME_PATTERN
from controller.ingest import dead_letters
from controller.ingest.dead_letters import DeadLetterPublic, DeadLettersPublic

router = APIRouter(prefix="/v1/ingest", tags=["ingest"], responses=AUTHENTICATED)


@router.get("/dead-letters", operation_id="list_dead_letters")
def list_dead_letters(
    session: SessionDep,
    _: Admin,
    host: str | None = Query(default=None, pattern=NAME_PATTERN, description="whose stream"),
    limit: int = Query(default=50, ge=1, le=1000),
    offset: Offset = 0,
) -> DeadLettersPublic:
    """Stream entries ingest could not store, with the reason; the entries around each were
    stored."""
    rows, total = dead_letters.list_letters(session=session, host=host, limit=limit, offset=offset)
    data = [DeadLetterPublic.model_validate(r, from_attributes=True) for r in rows]
    return DeadLettersPublic(data=data, count=total)
