"""Schedules: a job template fired by cron or interval, and the record of every slot."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from controller.db import Base, utcnow
from controller.jobs.models import JobCreate, JobState
from controller.schedules.timing import MAX_INTERVAL_S, MIN_INTERVAL_S
from controller.validators import at_most_one, exactly_one

# Ten years: kept runs and the misfire grace past that are mistakes, and overflow a datetime.
MAX_AGE_S = 10 * 366 * 86400.0
MAX_RUNS = 1_000_000


class FireOutcome(str, Enum):
    fired = "fired"
    skipped_overlap = "skipped_overlap"
    skipped_misfire = "skipped_misfire"
    failed = "failed"


class Schedule(Base):
    __tablename__ = "schedules"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    cron: Mapped[str | None] = mapped_column(String(128))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    interval_s: Mapped[float | None]
    template: Mapped[dict[str, Any]] = mapped_column(default=dict)
    enabled: Mapped[bool] = mapped_column(default=True)
    max_runs: Mapped[int | None]
    max_age_s: Mapped[float | None]
    allow_overlap: Mapped[bool] = mapped_column(default=False)
    misfire_grace_s: Mapped[float] = mapped_column(default=60.0)
    # Keep the program loaded for the template's duration; a snapshot per interval is a slot.
    continuous: Mapped[bool] = mapped_column(default=False)
    # The slot the next claim must match; the atomic claim advances it (see service.claim).
    next_fire_at: Mapped[datetime | None] = mapped_column(index=True)
    last_fired_at: Mapped[datetime | None]
    created_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ScheduleFire(Base):
    """One slot of a schedule and what became of it; unique per slot as a second guard."""

    __tablename__ = "schedule_fires"
    __table_args__ = (UniqueConstraint("schedule_id", "slot"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    schedule_id: Mapped[str] = mapped_column(
        ForeignKey("schedules.id", ondelete="CASCADE"), index=True
    )
    slot: Mapped[datetime]
    outcome: Mapped[str] = mapped_column(String(24))
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    reason: Mapped[str | None] = mapped_column(Text)
    manual: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# -- API schemas --------------------------------------------------------------------------------


class Retention(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_runs: int | None = Field(default=None, ge=1, le=MAX_RUNS)
    max_age_s: float | None = Field(default=None, gt=0, le=MAX_AGE_S)


class ScheduleCreate(BaseModel):
    """Exactly one of cron (read in time_zone) or interval_s."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    cron: str | None = Field(default=None, max_length=128)
    time_zone: str = Field(default="UTC", max_length=64)
    interval_s: float | None = Field(default=None, ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S)
    template: JobCreate
    enabled: bool = True
    retention: Retention = Field(default_factory=Retention)
    allow_overlap: bool = False
    misfire_grace_s: float = Field(default=60.0, ge=0, le=MAX_AGE_S)
    continuous: bool = Field(
        default=False,
        description="keep the program loaded for template.duration_s (the horizon) and take "
        "a snapshot every interval_s as a slot, instead of a new trace per slot",
    )

    @model_validator(mode="after")
    def _cron_or_interval(self) -> ScheduleCreate:
        exactly_one(self, "cron", "interval_s")
        return self


class ScheduleUpdate(BaseModel):
    """Fields to change; the timing is replaced as a whole when cron or interval_s is given."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    cron: str | None = Field(default=None, max_length=128)
    time_zone: str | None = Field(default=None, max_length=64)
    interval_s: float | None = Field(default=None, ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S)
    template: JobCreate | None = None
    enabled: bool | None = None
    retention: Retention | None = None
    allow_overlap: bool | None = None
    misfire_grace_s: float | None = Field(default=None, ge=0, le=MAX_AGE_S)

    @model_validator(mode="after")
    def _not_both(self) -> ScheduleUpdate:
        at_most_one(self, "cron", "interval_s")
        return self


class FirePublic(BaseModel):
    slot: datetime
    outcome: FireOutcome
    job_id: str | None
    job_state: JobState | None
    reason: str | None
    manual: bool


class SchedulePublic(BaseModel):
    id: str
    name: str
    cron: str | None
    time_zone: str
    interval_s: float | None
    template: dict[str, Any]
    enabled: bool
    retention: Retention
    allow_overlap: bool
    misfire_grace_s: float
    continuous: bool = False
    next_fire_at: datetime | None
    last_fired_at: datetime | None
    created_by: str | None
    created_at: datetime
    recent: list[FirePublic] = Field(description="the latest slots, newest first, with their jobs")


class SchedulesPublic(BaseModel):
    data: list[SchedulePublic]
    count: int
