"""What crosses the wire between controller and agents: requests, snapshots, states, errors.

No bcc import here: the controller imports this module.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
)

from node_agent.wire import HOST_NAME_PATTERN

PROTOCOL_VERSION = 1
MAX_ERROR_DETAIL = 8192
COMM_LEN = 16  # the kernel's TASK_COMM_LEN, NUL included

# Bounds on everything an agent sends: a traced host controls these, and the controller
# stores them (SQLite and PostgreSQL integers are signed 64-bit; seq is a 32-bit column).
MAX_SEQ = 2**31 - 1
MAX_COUNT = 2**64 - 1  # u64 kernel counters
MAX_ID = 128  # run and job ids
MAX_NAME = 128  # result, field, label and program names
MAX_TEXT = 4096  # one key value (a path: PATH_MAX), one frame, one reason
MAX_ROWS = 100_000  # Limits.max_rows's bound
MAX_SAMPLES = 10_000  # Limits.max_samples's bound
MAX_STACK_DEPTH = 1024  # bcc gives at most 127 kernel + 127 user frames
MAX_BUCKETS = 128
MAX_FIELDS = 32
MAX_RUNNING = 1024
# The names the API accepts for hosts: an envelope from any host it lets in must be readable.
HOST_PATTERN = HOST_NAME_PATTERN


def _clip(value: Any) -> Any:
    """Free text an agent writes (reasons, messages, probe errors) is cut, not refused."""
    if isinstance(value, str) and len(value) > MAX_TEXT:
        mark = " [... cut]"
        return value[: MAX_TEXT - len(mark)] + mark
    return value


Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Clipped = Annotated[str, BeforeValidator(_clip), Field(max_length=MAX_TEXT)]
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID)]
Name = Annotated[str, Field(max_length=MAX_NAME)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
HostName = Annotated[str, Field(pattern=HOST_PATTERN)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


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


# -- results ----------------------------------------------------------------------------------

KeyValue = (
    Annotated[str, Field(max_length=MAX_TEXT)] | Annotated[int, Field(ge=-(2**63), le=MAX_COUNT)]
)


class KeyField(_Model):
    name: Name
    type: Literal["str", "int", "addr", "port", "path"] = "str"


class CounterTable(_Model):
    """Rows of counts keyed by typed fields, largest first."""

    kind: Literal["counter_table"] = "counter_table"
    name: Name
    key_fields: list[KeyField] = Field(max_length=MAX_FIELDS)
    value_fields: list[Name] = Field(default_factory=lambda: ["count"], max_length=MAX_FIELDS)
    rows: list[
        tuple[
            Annotated[list[KeyValue], Field(max_length=MAX_FIELDS)],
            Annotated[list[Count], Field(max_length=MAX_FIELDS)],
        ]
    ] = Field(default_factory=list, max_length=MAX_ROWS)
    total_rows: Count = 0
    truncated: bool = False


class Log2Histogram(_Model):
    """A log2 histogram: slot s holds values in [2**(s-1), 2**s - 1]; slot 1 holds 0 and 1."""

    kind: Literal["log2_histogram"] = "log2_histogram"
    name: Name
    unit: Name
    labels: dict[Name, KeyValue] = Field(default_factory=dict, max_length=MAX_FIELDS)
    buckets: list[tuple[Annotated[int, Field(ge=0, lt=MAX_BUCKETS)], Count]] = Field(
        default_factory=list, description="(slot, count), sparse", max_length=MAX_BUCKETS
    )

    @property
    def total(self) -> int:
        return sum(c for _, c in self.buckets)


class StackCount(_Model):
    frames: list[Text] = Field(description="root first", max_length=MAX_STACK_DEPTH)
    count: Count


class FoldedStacks(_Model):
    """Sampled stacks, root first, in the folded format flame graphs read."""

    kind: Literal["folded_stacks"] = "folded_stacks"
    name: Name
    unit: Name = "samples"
    stacks: list[StackCount] = Field(default_factory=list, max_length=MAX_ROWS)
    total_rows: Count = 0
    truncated: bool = False

    def folded(self) -> list[str]:
        return [f"{';'.join(s.frames)} {s.count}" for s in self.stacks]


class EventSamples(_Model):
    """A bounded sample of individual events: the most recent ones, not all of them."""

    kind: Literal["event_samples"] = "event_samples"
    name: Name
    fields: list[Name] = Field(max_length=MAX_FIELDS)
    events: list[Annotated[list[KeyValue | float], Field(max_length=MAX_FIELDS)]] = Field(
        default_factory=list, max_length=MAX_SAMPLES
    )
    seen: Count = 0
    dropped: Count = 0


Result = Annotated[
    CounterTable | Log2Histogram | FoldedStacks | EventSamples, Field(discriminator="kind")
]


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
    headers: HeadersState
    headers_detail: Clipped | None = None
    lockdown: Clipped | None = None
    features: dict[Feature, bool]
    feature_errors: dict[Feature, Clipped] = Field(default_factory=dict)
    programs: list[ProgramSupport] = Field(default_factory=list, max_length=1024)
    probed_at: float = Field(default_factory=time.time)

    def missing(self, needed: set[Feature]) -> list[Feature]:
        return sorted((f for f in needed if not self.features.get(f, False)), key=lambda f: f.value)


class Heartbeat(_Model):
    """An agent's periodic sign of life, with what it can run."""

    type: Literal["heartbeat"] = "heartbeat"
    host: HostName
    agent_version: Annotated[str, Field(max_length=64)]
    at: float = Field(default_factory=time.time)
    capabilities: HostCapabilities | None = None
    running: list[Id] = Field(
        default_factory=list, description="run ids in progress", max_length=MAX_RUNNING
    )


class StreamEnvelope(_Model):
    """One entry of the events stream: which host sent what about which run."""

    host: HostName
    job_id: Id | None = None
    event: Annotated[Snapshot | StateChange | Heartbeat | Refusal, Field(discriminator="type")]
