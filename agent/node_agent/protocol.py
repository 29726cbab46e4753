"""What crosses the wire between controller and agents: requests, snapshots, states, errors.

No bcc import here: the controller imports this module.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from node_agent.bounds import (
    HOST_PATTERN,
    MAX_BUCKETS,
    MAX_BYTES,
    MAX_COUNT,
    MAX_CPU_S,
    MAX_FIELDS,
    MAX_ID,
    MAX_LAST_ERROR,
    MAX_NAME,
    MAX_ROWS,
    MAX_RUNNING,
    MAX_SAMPLES,
    MAX_SEQ,
    MAX_STACK_DEPTH,
    MAX_TEXT,
    MAX_TOTAL,
    Clipped,
    Count,
    HostName,
    Id,
    KeyValue,
    Name,
    Text,
    first_error,
)
from node_agent.bounds import WireModel as _Model
from node_agent.kinds import (
    CounterTable,
    EventSamples,
    FoldedStacks,
    KeyField,
    LinearHistogram,
    Log2Histogram,
    Result,
    StackCount,
)
from node_agent.safe_text import printable

PROTOCOL_VERSION = 1
MAX_ERROR_DETAIL = 8192
COMM_LEN = 16  # the kernel's TASK_COMM_LEN, NUL included

__all__ = [
    "HOST_PATTERN",
    "MAX_BUCKETS",
    "MAX_COUNT",
    "MAX_FIELDS",
    "MAX_ID",
    "MAX_NAME",
    "MAX_ROWS",
    "MAX_RUNNING",
    "MAX_SAMPLES",
    "MAX_SEQ",
    "MAX_STACK_DEPTH",
    "MAX_TEXT",
    "Clipped",
    "Count",
    "CounterTable",
    "EventSamples",
    "FoldedStacks",
    "HostName",
    "Id",
    "KeyField",
    "KeyValue",
    "LinearHistogram",
    "Log2Histogram",
    "Name",
    "Result",
    "StackCount",
    "Text",
]


class Scope(_Model):
    """Which tasks a trace looks at, filtered in the kernel. Empty means the whole host."""

    cgroup: str | None = Field(
        default=None,
        max_length=4096,  # PATH_MAX
        description="cgroup v2 path, absolute or relative to the cgroup2 mount",
    )
    pid: int | None = Field(
        default=None, ge=1, le=4_194_304, description="process id (tgid); PID_MAX_LIMIT at most"
    )
    comm: str | None = Field(
        default=None, min_length=1, max_length=COMM_LEN - 1, description="process name"
    )

    def is_empty(self) -> bool:
        return self.cgroup is None and self.pid is None and self.comm is None

    def kinds(self) -> set[str]:
        return {k for k in ("cgroup", "pid", "comm") if getattr(self, k) is not None}


class Limits(_Model):
    """Bounds on what one trace may cost and produce."""

    map_entries: int = Field(default=10240, ge=16, le=1_048_576)
    max_rows: int = Field(default=1000, ge=1, le=100_000)
    max_samples: int = Field(default=100, ge=0, le=10_000)
    memory_mb: int = Field(default=2048, ge=256, le=65_536)
    overhead_pct: float | None = Field(
        default=10.0,
        gt=0,
        le=400,
        description="stop the trace when its BPF programs plus the agent's own CPU cost more"
        " than this percent of one CPU over a few seconds; null: no guard (and no kernel BPF"
        " stats, which cost ~10-30 ns per program run while on)",
    )


class MapKind(str, Enum):
    counter = "counter"
    log2_hist = "log2_hist"


class MapDecl(_Model):
    """A map of a custom program to read, and how to read it."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    kind: MapKind
    unit: str = Field(default="value", max_length=32)


MAX_TRACE_S = 86_400.0  # a day: the longest trace (and snapshot interval) an agent accepts


class TraceTemplate(_Model):
    """What to trace, where, for how long and within what bounds: the fields a job, a schedule's
    template and an agent's request share. What the program makes of them (its parameters,
    scopes, custom source) is checked by `ProgramSpec.check`, at the API and on the agent."""

    program: str = Field(min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict, max_length=64)
    scope: Scope = Field(default_factory=Scope)
    duration_s: float = Field(gt=0, le=MAX_TRACE_S)
    interval_s: float | None = Field(
        default=None,
        ge=0.1,
        le=MAX_TRACE_S,
        description="snapshot every this many seconds; None: final only",
    )
    limits: Limits = Field(default_factory=Limits)
    source: str | None = Field(default=None, max_length=256_000, description="custom: bcc C")
    maps: list[MapDecl] = Field(
        default_factory=list, max_length=64, description="custom: maps to read"
    )


class TraceRequest(TraceTemplate):
    """One run of a template on one host, as its agent receives it."""

    run_id: str = Field(min_length=1, max_length=128)
    job_id: str | None = None
    grace_s: float = Field(default=5.0, ge=0.5, le=300)


class RunState(str, Enum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    timed_out = "timed_out"
    cancelled = "cancelled"
    expired = "expired"
    unsupported = "unsupported"

    @property
    def final(self) -> bool:
        return self not in (RunState.pending, RunState.running)


class ErrorCode(str, Enum):
    unknown_program = "unknown_program"
    bad_request = "bad_request"
    bad_parameter = "bad_parameter"
    unsupported = "unsupported"
    compile_error = "compile_error"
    verifier_rejected = "verifier_rejected"
    attach_failed = "attach_failed"
    limit_exceeded = "limit_exceeded"
    policy = "policy"
    killed = "killed"
    internal = "internal"
    lost = "lost"  # set by the controller: the run's agent stopped answering for it


class TraceError(_Model):
    code: ErrorCode
    message: Clipped
    detail: str | None = Field(default=None, description="compiler or verifier log, truncated")

    @field_validator("detail")
    @classmethod
    def _truncate(cls, v: str | None) -> str | None:
        return truncate_log(v) if v is not None else None


def truncate_log(text: str, limit: int = MAX_ERROR_DETAIL) -> str:
    """Keep the head and the tail of a long log: verifiers put the reason at the end."""
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head - 40
    return f"{text[:head]}\n... [{len(text) - head - tail} bytes cut] ...\n{text[-tail:]}"


# -- results: one module per kind in node_agent/kinds -------------------------------------


class SnapshotStats(_Model):
    events_lost: Count = 0
    map_full_drops: Count = 0
    rows_truncated: bool = False
    compile_s: float = 0.0
    attach_s: float = 0.0
    agent_cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    # What the trace costs its host since attach (kernel BPF stats + the trace's own CPU).
    bpf_run_time_s: float = Field(default=0.0, ge=0)
    bpf_runs: Count = 0
    events_per_s: float = Field(default=0.0, ge=0)
    overhead_pct: float | None = Field(
        default=None, ge=0, description="percent of one CPU; None when it was not measured"
    )
    attach: Name | None = Field(
        default=None,
        description="the attach point a program with options used, e.g."
        " tracepoint:sock:inet_sock_set_state; None for a program with one way to attach",
    )


class Snapshot(_Model):
    """Cumulative results from the start of the run up to interval_end."""

    type: Literal["snapshot"] = "snapshot"
    run_id: Id
    seq: int = Field(ge=0, le=MAX_SEQ)
    interval_start: float
    interval_end: float
    final: bool = False
    results: list[Result] = Field(default_factory=list, max_length=MAX_FIELDS * 4)
    stats: SnapshotStats = Field(default_factory=SnapshotStats)


class StateChange(_Model):
    type: Literal["state"] = "state"
    run_id: Id
    state: RunState
    at: float = Field(default_factory=time.time)
    error: TraceError | None = None
    reason: Clipped | None = None


RunEvent = Annotated[Snapshot | StateChange, Field(discriminator="type")]


class RefusalReason(str, Enum):
    """Why an agent refused work it was sent (each one becomes an audit record)."""

    bad_signature = "bad_signature"
    unknown_key = "unknown_key"
    wrong_host = "wrong_host"
    expired = "expired"
    replay = "replay"
    policy = "policy"
    unreadable = "unreadable"


class Refusal(_Model):
    """An agent refused a task or a cancel before acting on it."""

    type: Literal["refusal"] = "refusal"
    reason: RefusalReason
    detail: str = Field(default="", max_length=1024)
    run_id: str | None = Field(default=None, max_length=128)
    at: float = Field(default_factory=time.time)


# -- capabilities -----------------------------------------------------------------------------


class Feature(str, Enum):
    tracepoints = "tracepoints"
    kprobes = "kprobes"
    fentry = "fentry"
    uprobes = "uprobes"
    perf_events = "perf_events"
    btf = "btf"
    bpftrace = "bpftrace"  # the bpftrace tool itself, for the bpftrace program


class HeadersState(str, Enum):
    exact = "exact"
    approximate = "approximate"
    none = "none"


class ProgramSupport(_Model):
    program: Name
    supported: bool
    reason: Clipped | None = None


class HostCapabilities(_Model):
    kernel_release: Name
    arch: Name
    bcc_version: Name | None
    bpftrace_version: Name | None = None
    headers: HeadersState
    headers_detail: Clipped | None = None
    lockdown: Clipped | None = None
    features: dict[Feature, bool]
    feature_errors: dict[Feature, Clipped] = Field(default_factory=dict)
    programs: list[ProgramSupport] = Field(default_factory=list, max_length=1024)
    probed_at: float = Field(default_factory=time.time)

    def missing(self, needed: set[Feature]) -> list[Feature]:
        return sorted((f for f in needed if not self.features.get(f, False)), key=lambda f: f.value)


def _last_error(value: Any) -> Any:
    """An error names what a traced host chose (paths, symbols): one printable line, cut."""
    if not isinstance(value, str):
        return value
    text = printable(value)
    if len(text) > MAX_LAST_ERROR:
        mark = " [... cut]"
        text = text[: MAX_LAST_ERROR - len(mark)] + mark
    return text


def _utc(value: datetime) -> datetime:
    """Stored and compared as UTC: a time without a zone is taken as UTC; none before 1970."""
    try:
        value = value.astimezone(timezone.utc) if value.tzinfo else value
    except OverflowError:  # 9999-12-31T23:00-05:00 has no UTC time
        raise ValueError("time out of range") from None
    if value.year < 1970:
        raise ValueError("time before 1970")
    return value.replace(tzinfo=timezone.utc)


Bytes = Annotated[int, Field(ge=0, le=MAX_BYTES)]
Total = Annotated[int, Field(ge=0, le=MAX_TOTAL)]
UtcTime = Annotated[datetime, AfterValidator(_utc)]
LastError = Annotated[str, BeforeValidator(_last_error), Field(max_length=MAX_LAST_ERROR)]


class AgentStats(_Model):
    """What the agent itself costs its host and how its traces went, since it started: all its
    processes (the worker and every descendant: spare, zygote, trace children)."""

    rss_bytes: Bytes = Field(description="resident memory, summed over the agent's processes")
    pss_bytes: Bytes | None = Field(
        default=None,
        description="proportional set size (shared pages split), read at most once a minute;"
        " None: unreadable",
    )
    cpu_seconds_total: float = Field(
        ge=0, le=MAX_CPU_S, description="user + system CPU, exited children included"
    )
    programs_loaded: int = Field(ge=0, le=MAX_RUNNING, description="traces running now")
    traces_run_total: Total
    traces_failed_total: Total
    last_error: LastError | None = None
    last_error_at: UtcTime | None = None
    started_at: UtcTime

    @model_validator(mode="after")
    def _failed_among_run(self) -> AgentStats:
        if self.traces_failed_total > self.traces_run_total:
            raise ValueError("traces_failed_total exceeds traces_run_total")
        return self


class Heartbeat(_Model):
    """An agent's periodic sign of life, with what it can run and what it costs.

    Its `agent` stats are an extra: ones that do not validate are dropped (`agent_refused`
    says why), never the beat, whose arrival alone keeps the host online."""

    type: Literal["heartbeat"] = "heartbeat"
    host: HostName
    agent_version: Annotated[str, Field(max_length=64)]
    at: float = Field(default_factory=time.time)
    capabilities: HostCapabilities | None = None
    running: list[Id] = Field(
        default_factory=list, description="run ids in progress", max_length=MAX_RUNNING
    )
    agent: AgentStats | None = Field(default=None, description="None from agents before stats")
    _agent_refused: str | None = PrivateAttr(default=None)

    @property
    def agent_refused(self) -> str | None:
        """Why the beat's stats were dropped, if they were."""
        return self._agent_refused

    @model_validator(mode="wrap")
    @classmethod
    def _stats_apart(cls, data: Any, handler: ModelWrapValidatorHandler[Heartbeat]) -> Heartbeat:
        stats = data.get("agent") if isinstance(data, dict) else None
        if stats is None or isinstance(stats, AgentStats):
            return handler(data)
        try:
            AgentStats.model_validate(stats)
        except ValidationError as exc:
            beat = handler({**data, "agent": None})
            beat._agent_refused = first_error(exc, within="agent")
            return beat
        return handler(data)


class StreamEnvelope(_Model):
    """One entry of the events stream: which host sent what about which run."""

    host: HostName
    job_id: Id | None = None
    event: Annotated[Snapshot | StateChange | Heartbeat | Refusal, Field(discriminator="type")]
