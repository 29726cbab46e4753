"""Audit records: the table and the API's schema family."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from controller.db import Base, utcnow

# Who made a record: an API caller (a token) or an agent (a host).
SOURCE_API = "api"
SOURCE_AGENT = "agent"


class AuditRecord(Base):
    """Append-only: rows are added and, past the retention, pruned; never edited."""

    __tablename__ = "audit_records"
    __table_args__ = (Index("ix_audit_records_at", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(8))
    # The token's name (API) or the host's name (agent); None when no valid token was given.
    actor: Mapped[str | None] = mapped_column(String(128), index=True)
    role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64), index=True)
    method: Mapped[str | None] = mapped_column(String(8))
    path: Mapped[str | None] = mapped_column(String(512))
    # The one host a record is about, when there is one (host routes, agents' refusals).
    host: Mapped[str | None] = mapped_column(String(128), index=True)
    objects: Mapped[dict[str, Any]] = mapped_column(default=dict)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    client: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[int | None]


class AuditRecordPublic(BaseModel):
    id: int
    at: datetime
    source: str
    actor: str | None
    role: str | None
    action: str
    method: str | None
    path: str | None
    host: str | None
    objects: dict[str, Any]
    summary: dict[str, Any]
    client: str | None
    status: int | None


class AuditRecordsPublic(BaseModel):
    data: list[AuditRecordPublic]
    count: int
