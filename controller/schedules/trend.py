"""A metric over a schedule's runs: one series per host, one point per fired slot.

Metrics: `p99:HIST` (any pNN or pNN.N; all label sets of HIST merged; log2 or linear),
`count:HIST`, `total:TABLE` and `rate:TABLE` (first value column summed; rate per second of
the snapshot's span), `count:TABLE` (its total: `count:@` of a bpftrace `@[comm] = count()`
job is every event counted), `key:TABLE:KEY` (one key's count; a multi-field key is its values
joined by ","). Each kind answers its own metrics (controller/kinds).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from controller.jobs.models import Job, Run, SnapshotRow
from controller.jobs.results import latest_snapshots, parse_results
from controller.kinds import VIEWS
from controller.schedules import continuous
from controller.schedules.models import FireOutcome, Schedule, ScheduleFire
from node_agent.protocol import Result

_METRIC = re.compile(r"^(?:(p\d{1,2}(?:\.\d+)?|p100|count|total|rate):([^:]+)|key:([^:]+):(.+))$")


class BadMetric(ValueError):
    pass


@dataclass(frozen=True)
class Metric:
    kind: str  # "pNN", "count", "total", "rate" or "key"
    name: str
    key: str | None = None

    @classmethod
    def parse(cls, raw: str) -> Metric:
        match = _METRIC.match(raw)
        if match is None:
            raise BadMetric(
                f"bad metric {raw!r}: want pNN:HIST, count:HIST|T, total:T, rate:T, key:T:K"
            )
        if match.group(3):
            return cls("key", match.group(3), match.group(4))
        kind = match.group(1)
        if kind.startswith("p") and not 0 < float(kind[1:]) <= 100:
            raise BadMetric(f"bad percentile in {raw!r}")
        return cls(kind, match.group(2))

    def value(self, results: list[Result], span_s: float) -> tuple[float | None, str | None]:
        """The metric's value in one host's results, and its unit; None when absent. Each
        kind of result of the metric's name is asked (controller/kinds)."""
        by_kind: dict[str, list[Result]] = {}
        for r in results:
            if r.name == self.name:
                by_kind.setdefault(r.kind, []).append(r)
        for kind, found in by_kind.items():
            answer = VIEWS[kind].metric(self.kind, self.key, found, span_s)
            if answer is None and self.kind == "count":
                # A table of counts has no count of its own: the sum of its counts is.
                answer = VIEWS[kind].metric("total", None, found, span_s)
            if answer is not None:
                return answer
        return None, None


class TrendPoint(BaseModel):
    slot: datetime
    job_id: str
    value: float | None


class TrendSeries(BaseModel):
    host: str
    points: list[TrendPoint]


class ScheduleTrend(BaseModel):
    schedule_id: str
    metric: str
    unit: str | None
    series: list[TrendSeries]


def fired(schedule: Schedule, *columns: Any) -> Select[Any]:
    """The given columns of a schedule's fired jobs, newest slot first."""
    return (
        select(*columns)
        .select_from(ScheduleFire)
        .join(Job, Job.id == ScheduleFire.job_id)
        .where(
            ScheduleFire.schedule_id == schedule.id,
            ScheduleFire.outcome == FireOutcome.fired.value,
        )
        .order_by(ScheduleFire.slot.desc(), ScheduleFire.id.desc())
    )


# What a picker offers for each result found; any other metric the route parses works too.
OFFERED = ("p50", "p90", "p99", "count", "total", "rate")
_LOOKED_AT = 8  # snapshots read to learn the results' names: every host runs the same program


def offered(*, session: Session, schedule: Schedule) -> list[str]:
    """The metrics with an answer in the newest fired job's results, each kind asked."""
    job_id = session.scalar(fired(schedule, ScheduleFire.job_id).limit(1))
    if job_id is None:
        return []
    rows = session.scalars(
        select(SnapshotRow)
        .where(SnapshotRow.job_id == job_id)
        .order_by(SnapshotRow.seq.desc())
        .limit(_LOOKED_AT)
    )
    metrics: list[str] = []
    for row in rows:
        by_name: dict[tuple[str, str], list[Result]] = {}
        for result in parse_results(row.results):
            by_name.setdefault((result.kind, result.name), []).append(result)
        for (kind, name), results in sorted(by_name.items()):
            for metric in OFFERED:
                found = f"{metric}:{name}"
                if found not in metrics and VIEWS[kind].metric(metric, None, results, 1.0):
                    metrics.append(found)
    return metrics


def trend(
    *, session: Session, schedule: Schedule, metric: Metric, raw: str, limit: int = 200
) -> ScheduleTrend:
    fires = session.execute(
        fired(schedule, ScheduleFire.slot, ScheduleFire.job_id).limit(limit)
    ).all()
    series: dict[str, list[TrendPoint]] = {}
    unit: str | None = None
    for slot, job_id in reversed(fires):
        assert job_id is not None
        if schedule.continuous:
            # Each snapshot of the horizon job is a slot of its own: a point per snapshot.
            for part in continuous.slots(session=session, job_id=job_id):
                value, found_unit = metric.value(part.results, part.span_s)
                unit = unit or found_unit
                point = TrendPoint(slot=part.at, job_id=job_id, value=value)
                series.setdefault(part.host, []).append(point)
            continue
        runs = {r.id: r.host_name for r in session.scalars(select(Run).where(Run.job_id == job_id))}
        for run_id, row in latest_snapshots(session=session, job_id=job_id).items():
            results = parse_results(row.results)
            value, found_unit = metric.value(results, row.interval_end - row.interval_start)
            unit = unit or found_unit
            host = runs.get(run_id, row.host_name)
            series.setdefault(host, []).append(TrendPoint(slot=slot, job_id=job_id, value=value))
    return ScheduleTrend(
        schedule_id=schedule.id,
        metric=raw,
        unit=unit,
        series=[TrendSeries(host=h, points=p) for h, p in sorted(series.items())],
    )
