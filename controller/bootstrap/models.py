"""Bootstrap runs, their recorded steps and batches: the tables and the API's schema family."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from controller.db import Base, utcnow
from controller.hosts.models import HostName, LabelKey, LabelValue
from controller.jobs.models import MAX_JOB_DURATION_S
from controller.validators import exactly_one

OUTPUT_TAIL = 4000


class RunKind(str, Enum):
    bootstrap = "bootstrap"
    uninstall = "uninstall"


class RunState(str, Enum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    # Never started: its batch stopped after too many failures.
    cancelled = "cancelled"

    @property
    def final(self) -> bool:
        return self not in (RunState.pending, RunState.running)


class StepStatus(str, Enum):
    pending = "pending"
    running = "running"
    ok = "ok"  # already as wanted: nothing done
    changed = "changed"
    skipped = "skipped"  # not run (an earlier step failed) or not applicable
    failed = "failed"


class BootstrapBatch(Base):
    __tablename__ = "bootstrap_batches"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    parallel: Mapped[int]
    max_failures: Mapped[int | None]
    created_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    runs: Mapped[list[BootstrapRun]] = relationship(
        back_populates="batch", order_by="BootstrapRun.host_name"
    )


class BootstrapRun(Base):
    __tablename__ = "bootstrap_runs"
    __table_args__ = (Index("ix_bootstrap_runs_host_created", "host_name", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    host_name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16), default=RunKind.bootstrap.value)
    batch_id: Mapped[str | None] = mapped_column(
        ForeignKey("bootstrap_batches.id", ondelete="SET NULL"), index=True
    )
    state: Mapped[str] = mapped_column(String(16), default=RunState.pending.value, index=True)
    # BootstrapOptions as JSON: never a secret (those stay in Settings).
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    agent_version: Mapped[str | None] = mapped_column(String(64))

    batch: Mapped[BootstrapBatch | None] = relationship(back_populates="runs")
    steps: Mapped[list[BootstrapStep]] = relationship(
        back_populates="run", order_by="BootstrapStep.position", cascade="all, delete-orphan"
    )


class BootstrapStep(Base):
    __tablename__ = "bootstrap_steps"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(
        ForeignKey("bootstrap_runs.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int]
    name: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=StepStatus.pending.value)
    started_at: Mapped[datetime | None]
    duration_s: Mapped[float | None]
    output: Mapped[str] = mapped_column(Text, default="")

    run: Mapped[BootstrapRun] = relationship(back_populates="steps")


# -- API schemas --------------------------------------------------------------------------------


class BootstrapOptions(BaseModel):
    """How to bootstrap: stored with the run, so nothing here may be a secret."""

    model_config = ConfigDict(extra="forbid")

    trust_on_first_use: bool = Field(
        default=False, description="accept and pin an unknown host key (never a changed one)"
    )
    cgroup: str | None = Field(
        default=None,
        max_length=255,
        description="cgroup v2 path for the agent's traces; {host} becomes the host's name",
    )
    heartbeat_s: float | None = Field(default=None, gt=0, le=3600)
    max_duration_s: float | None = Field(default=None, gt=0, le=MAX_JOB_DURATION_S)
    concurrency: int | None = Field(default=None, ge=1, le=64)
    verify_timeout_s: float | None = Field(default=None, gt=0, le=3600)
    # A slow host (an emulated VM, a small board) compiles for minutes: its agent's bounds.
    # Under a second no bcc compile ends, so every probe or trace would time out.
    probe_timeout_s: float | None = Field(
        default=None, ge=1, le=3600, description="the agent's capability probe (bcc compiles)"
    )
    compile_timeout_s: float | None = Field(
        default=None, ge=1, le=3600, description="a trace's compile and attach on the host"
    )
    max_overhead_pct: float | None = Field(
        default=None,
        gt=0,
        le=400,
        description="the most a job may set limits.overhead_pct to, % of one CPU;"
        " 400 lets a job lift the guard (overhead_pct null)",
    )
    with_bpftrace: bool = Field(
        default=False,
        description="install the distro's bpftrace and let the agent run bpftrace scripts"
        " (FLEETTRACE_ALLOW_BPFTRACE): the admin-only bpftrace program",
    )


class BatchCreate(BaseModel):
    """Bootstrap many hosts: by name or by label selector (exactly one)."""

    model_config = ConfigDict(extra="forbid")

    hosts: list[HostName] | None = Field(default=None, min_length=1, max_length=10_000)
    selector: dict[LabelKey, LabelValue] | None = Field(default=None, min_length=1, max_length=64)
    parallel: int = Field(default=4, ge=1, le=64, description="bootstraps at once")
    max_failures: int | None = Field(
        default=None, ge=1, le=10_000, description="start no new bootstrap after this many failed"
    )
    options: BootstrapOptions = Field(default_factory=BootstrapOptions)

    @model_validator(mode="after")
    def _exactly_one(self) -> BatchCreate:
        exactly_one(self, "hosts", "selector")
        return self


class StepPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    status: StepStatus
    started_at: datetime | None
    duration_s: float | None
    output: str = Field(description="the tail of the step's output, secrets redacted")


class BootstrapRunPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    # Read from the table's row as it is (`model_validate(run)`), whose `host_name` this is.
    host: str = Field(validation_alias=AliasChoices("host", "host_name"))
    kind: RunKind
    state: RunState
    batch_id: str | None
    options: dict[str, Any]
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    agent_version: str | None
    steps: list[StepPublic]


class BatchPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    parallel: int
    max_failures: int | None
    created_at: datetime
    runs: list[BootstrapRunPublic]
