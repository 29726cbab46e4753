"""Dead letters: stream entries ingest could not store, kept with the reason, never retried.

An entry lands here when it cannot be read (not an event envelope) or when storing it alone
fails for a reason of its own (a value the database refuses, a bug met by odd input); the
entries around it are stored as usual. A database that is away is not the entry's fault: that
batch stays pending and is retried. The table is bounded: the newest KEEP rows stay.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Index, String, Text, delete, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from controller.db import Base, utcnow

log = logging.getLogger(__name__)
KEEP = 10_000
DATA_CHARS = 16_384  # of an entry's data, kept for a look; its full size is recorded
REASON_CHARS = 1024


class DeadLetter(Base):
    __tablename__ = "dead_letters"
    __table_args__ = (Index("ix_dead_letters_host_id", "host", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    host: Mapped[str] = mapped_column(String(128))  # whose stream it came on
    entry_id: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(REASON_CHARS))
    size: Mapped[int]
    data: Mapped[str] = mapped_column(Text)


class DeadLetterPublic(BaseModel):
    id: int
    at: datetime
    host: str
    entry_id: str
    reason: str
    size: int
    data: str


class DeadLettersPublic(BaseModel):
    data: list[DeadLetterPublic]
    count: int


def storable(text: str, limit: int) -> str:
    """Text every database takes: at most `limit` characters, NUL and lone surrogates shown
    as escapes (PostgreSQL refuses NUL in text; no driver encodes a lone surrogate)."""
    text = text[:limit]
    return "".join(
        f"\\u{ord(c):04x}" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in text
    )


def record(session: Session, *, host: str, entry_id: bytes, data: bytes, reason: str) -> None:
    """Add one dead letter to the caller's transaction."""
    entry = entry_id.decode(errors="replace")
    log.error("ingest: entry %s from %s is a dead letter: %s", entry, host, reason[:200])
    session.add(
        DeadLetter(
            host=storable(host, 128),
            entry_id=storable(entry, 64),
            reason=storable(reason, REASON_CHARS),
            size=len(data),
            data=storable(data[: DATA_CHARS * 4].decode(errors="replace"), DATA_CHARS),
        )
    )


def prune(session: Session, keep: int = KEEP) -> int:
    """Drop all but the newest `keep` dead letters; returns how many went."""
    cutoff = session.scalar(
        select(DeadLetter.id).order_by(DeadLetter.id.desc()).offset(keep).limit(1)
    )
    if cutoff is None:
        return 0
    result: Any = session.execute(delete(DeadLetter).where(DeadLetter.id <= cutoff))
    return int(result.rowcount or 0)


def list_letters(
    *, session: Session, host: str | None, limit: int, offset: int
) -> tuple[list[DeadLetter], int]:
    """Newest first."""
    query = select(DeadLetter)
    if host is not None:
        query = query.where(DeadLetter.host == host)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(DeadLetter.id.desc()).limit(limit).offset(offset))
    return list(rows), total
