"""Jobs, their per-host runs, stored snapshots and the ordered event log."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from controller.db import Base, PydanticJSON, utcnow
from controller.hosts.models import HostName, LabelKey, LabelValue
from controller.validators import exactly_one
from node_agent.protocol import (
    MAX_TRACE_S,
    Limits,
    MapDecl,
    Result,
    RunState,
    Scope,
    SnapshotStats,
    TraceTemplate,
)

# The hard ceiling under the configurable max_duration_s (checked at submit): what agents take.
MAX_JOB_DURATION_S = MAX_TRACE_S


class JobState(str, Enum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    partial = "partial"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def final(self) -> bool:
        return self not in (JobState.pending, JobState.running)


class Targets(BaseModel):
    """Which hosts: by name, by label selector, or all of them (exactly one)."""

    model_config = ConfigDict(extra="forbid")

    hosts: list[HostName] | None = Field(default=None, min_length=1, max_length=10_000)
    selector: dict[LabelKey, LabelValue] | None = Field(default=None, min_length=1, max_length=64)
    all: bool = False

    @model_validator(mode="after")
    def _exactly_one(self) -> Targets:
        exactly_one(self, "hosts", "selector", "all")
        return self


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    program: Mapped[str] = mapped_column(String(64), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Stored as the JSON they always were; read back validated (rows written before load too).
    scope: Mapped[Scope] = mapped_column(PydanticJSON(Scope, exclude_none=True), default=Scope)
    limits: Mapped[Limits] = mapped_column(PydanticJSON(Limits), default=Limits)
    targets: Mapped[Targets] = mapped_column(
        PydanticJSON(Targets, exclude_none=True, exclude_defaults=True)
    )
    duration_s: Mapped[float]
    interval_s: Mapped[float | None]
    source: Mapped[str | None] = mapped_column(Text)
    maps: Mapped[list[MapDecl]] = mapped_column(PydanticJSON(list[MapDecl]), default=list)
    state: Mapped[str] = mapped_column(String(16), default=JobState.pending.value, index=True)
    created_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(default=False)

    runs: Mapped[list[Run]] = relationship(
        back_populates="job", order_by="Run.host_name", cascade="all, delete-orphan"
    )


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("job_id", "host_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    host_name: Mapped[str] = mapped_column(String(128), index=True)
    state: Mapped[str] = mapped_column(String(16), default=RunState.pending.value, index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    error: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    dispatched_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None] = mapped_column(index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    last_seq: Mapped[int] = mapped_column(default=-1)

    job: Mapped[Job] = relationship(back_populates="runs")


class SnapshotRow(Base):
    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("run_id", "seq"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(String(36), index=True)
    host_name: Mapped[str] = mapped_column(String(128))
    seq: Mapped[int]
    final: Mapped[bool] = mapped_column(default=False)
    interval_start: Mapped[float]
    interval_end: Mapped[float]
    results: Mapped[list[Any]] = mapped_column(default=list)
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobEvent(Base):
    """Everything that happened to a job, in order: what SSE replays to late subscribers."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(String(36))
    run_id: Mapped[str | None] = mapped_column(String(36))
    host_name: Mapped[str | None] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# -- API schemas --------------------------------------------------------------------------------


class JobCreate(TraceTemplate):
    """A trace template and the hosts to run it on; also a schedule's template."""

    targets: Targets


class RunPublic(BaseModel):
    id: str
    host: str
    state: RunState
    reason: str | None
    error: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    snapshots: int


class JobPublic(BaseModel):
    id: str
    program: str
    params: dict[str, Any]
    scope: Scope
    limits: Limits
    targets: Targets
    duration_s: float
    interval_s: float | None
    state: JobState
    created_by: str | None
    created_at: datetime
    finished_at: datetime | None
    runs: list[RunPublic]
    counts: dict[str, int] = Field(description="runs per state")


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class HostResult(BaseModel):
    host: str
    run_id: str
    state: RunState
    seq: int | None
    final: bool
    interval_start: float | None
    interval_end: float | None
    results: list[Result]
    stats: SnapshotStats | None


class JobResults(BaseModel):
    job_id: str
    program: str
    state: JobState
    hosts: list[HostResult]
    merged: list[Result] = Field(
        description="the fleet: counters and stacks summed, histograms merged"
    )
