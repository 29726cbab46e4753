"""Report schemas: per-host numbers, the fleet, outliers, one-host keys, missing hosts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

from pydantic import BaseModel, Field

from controller.jobs.models import JobState
from node_agent.protocol import KeyValue, RunState

PERCENTILE_METHOD = (
    "percentiles are the upper bound of the log2 bucket where the cumulative count reaches "
    "rank ceil(p% of n); max is the upper bound of the highest non-empty bucket"
)
OUTLIER_METHOD = (
    "modified z-score 0.6745*(x-median)/MAD over hosts, flagged when |z| > 3.5 (needs 3+ hosts; "
    "when MAD is 0 the mean absolute deviation times 1.2533 stands in); histogram distance is "
    "the Jensen-Shannon divergence (base 2, 0..1) between a host's bucket distribution and the "
    "fleet's, flagged at 0.1 or more when, with 3+ hosts, its own modified z-score over hosts is "
    "also > 3.5; ranked by score / threshold"
)


class HistogramStats(BaseModel):
    name: str
    labels: dict[str, KeyValue]
    unit: str
    count: int
    rate_per_s: float | None
    p50: int | None
    p90: int | None
    p99: int | None
    max: int | None


class TopKey(BaseModel):
    key: list[KeyValue]
    values: list[int]


class TableStats(BaseModel):
    name: str
    key_fields: list[str]
    value_fields: list[str]
    rows: int
    totals: list[int]
    rates_per_s: list[float | None] | None  # None for a min/max/mean field: no rate
    top: list[TopKey]
    truncated: bool
    aggregations: list[Literal["sum", "min", "max", "mean"]] | None = None  # None: all sums


MetricSource = Literal["hist", "table", "key"]


@dataclass(frozen=True)
class MetricId:
    """A metric's structured id; on the wire `SOURCE:NAME:ASPECT` (hist:NAME{labels}:p99,
    table:NAME:FIELD, key:TABLE:KEY), where a histogram's name and a key may hold colons."""

    source: MetricSource
    name: str  # the histogram series or the table
    aspect: str  # p99, rate, distribution; a value field; a key's text

    def __str__(self) -> str:
        return f"{self.source}:{self.name}:{self.aspect}"

    @classmethod
    def parse(cls, raw: str) -> MetricId:
        source, _, rest = raw.partition(":")
        if source not in ("hist", "table", "key") or ":" not in rest:
            raise ValueError(f"bad metric id {raw!r}: want hist:, table: or key:NAME:ASPECT")
        # A key's text is free (an address has colons); a histogram's labels may hold some.
        name, _, aspect = rest.partition(":") if source == "key" else rest.rpartition(":")
        return cls(cast(MetricSource, source), name, aspect)

    def is_key_of(self, table: MetricId) -> bool:
        """A key of that table's (a key outlier says why its table's total is off)."""
        return self.source == "key" and table.source == "table" and self.name == table.name


class Metric(BaseModel):
    """One comparable number of a host, named the same on every host and every job."""

    id: str = Field(description="stable: hist:NAME{labels}:p99, table:NAME:count/s, ...")
    label: str
    value: float
    unit: str


class HostCost(BaseModel):
    """What the trace cost its host, from its last snapshot (kernel BPF stats + its CPU)."""

    overhead_pct: float | None = Field(description="percent of one CPU; None: not measured")
    events_per_s: float
    bpf_run_time_s: float
    bpf_runs: int
    agent_cpu_s: float
    events_lost: int
    attach: str | None = Field(
        default=None, description="the attach point a program with options used on this host"
    )


class HostReport(BaseModel):
    host: str
    state: RunState
    reason: str | None
    span_s: float | None = Field(description="first snapshot's start to the last one's end")
    histograms: list[HistogramStats]
    tables: list[TableStats]
    metrics: list[Metric]
    deviation: dict[str, float | None] = Field(
        description="metric id -> value / fleet median (None when the median is 0)"
    )
    cost: HostCost | None = Field(default=None, description="None: no snapshot yet")


class FleetReport(BaseModel):
    hosts: int
    histograms: list[HistogramStats]
    tables: list[TableStats] = Field(
        description="each counter table summed over hosts by its non-pid key fields (a pid "
        "names different processes on different hosts); rows counts the distinct keys"
    )
    medians: dict[str, float]


class Outlier(BaseModel):
    host: str
    metric: str
    kind: Literal["mad", "distance"]
    value: float
    median: float | None
    score: float = Field(description="|modified z| for mad, JS divergence for distance")
    rank_score: float = Field(description="score / its threshold: what the ranking uses")
    sentence: str


class OneHostKey(BaseModel):
    table: str
    host: str
    key: dict[str, KeyValue] = Field(description="non-pid key fields only")
    values: list[int]


class MissingHost(BaseModel):
    host: str
    state: RunState
    reason: str | None
    has_data: bool


class JobReport(BaseModel):
    job_id: str
    program: str
    state: JobState
    percentile_method: str = PERCENTILE_METHOD
    outlier_method: str = OUTLIER_METHOD
    outliers: list[Outlier]
    hosts: list[HostReport]
    fleet: FleetReport
    one_host_keys: list[OneHostKey]
    missing: list[MissingHost] = Field(description="runs that did not succeed, and why")


class MetricDelta(BaseModel):
    id: str
    label: str
    unit: str
    base: float | None
    other: float | None
    delta: float | None
    ratio: float | None


class HostDelta(BaseModel):
    host: str
    in_base: bool
    in_other: bool
    metrics: list[MetricDelta]


class CompareReport(BaseModel):
    base: str
    other: str
    program_base: str
    program_other: str
    hosts: list[HostDelta]


SpeedscopeSchema = Literal["https://www.speedscope.app/file-format-schema.json"]
SPEEDSCOPE_SCHEMA: SpeedscopeSchema = "https://www.speedscope.app/file-format-schema.json"


class SpeedscopeFrame(BaseModel):
    name: str


class SpeedscopeShared(BaseModel):
    frames: list[SpeedscopeFrame]


class SpeedscopeProfile(BaseModel):
    """A "sampled" profile: each sample a stack of indexes into the shared frames."""

    type: Literal["sampled"] = "sampled"
    name: str
    unit: Literal["none", "nanoseconds", "microseconds", "milliseconds", "seconds", "bytes"]
    startValue: float  # speedscope's spelling
    endValue: float
    samples: list[list[int]]
    weights: list[float]


class SpeedscopeFile(BaseModel):
    """speedscope's file format (https://www.speedscope.app/file-format-schema.json)."""

    schema_: SpeedscopeSchema = Field(default=SPEEDSCOPE_SCHEMA, alias="$schema")
    name: str
    exporter: str
    activeProfileIndex: int
    shared: SpeedscopeShared
    profiles: list[SpeedscopeProfile]
