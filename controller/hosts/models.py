"""Hosts: the table and the API's schema family."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from controller.db import Base, utcnow

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
LABEL_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$"

HostState = Literal["online", "offline", "never_seen"]


class Host(Base):
    __tablename__ = "hosts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    address: Mapped[str | None] = mapped_column(String(255))
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_heartbeat: Mapped[datetime | None]
    agent_version: Mapped[str | None] = mapped_column(String(64))
    capabilities: Mapped[dict[str, Any] | None]


class HostCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    address: str | None = Field(default=None, max_length=255)
    labels: dict[str, str] = Field(default_factory=dict)


class HostUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(default=None, max_length=255)
    labels: dict[str, str] | None = None


class HostPublic(BaseModel):
    name: str
    address: str | None
    labels: dict[str, str]
    state: HostState
    last_heartbeat: datetime | None
    agent_version: str | None
    capabilities: dict[str, Any] | None
    created_at: datetime


class HostsPublic(BaseModel):
    data: list[HostPublic]
    count: int
