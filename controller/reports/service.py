"""Build a job's report from its stored results, and compare two jobs host by host."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from controller.jobs.models import Job, JobResults
from controller.reports import exports, store
from controller.reports import outliers as ol
from controller.reports.digest import HistDigest, Ints, TableDigest, dense_histogram, digest, sparse
from controller.reports.fleet import (
    FleetTable,
    HostInput,
    ReportInput,
    Series,
    constant,
    fleet_table,
    series_of,
    table_names,
    values_on,
)
from controller.reports.models import (
    CompareReport,
    FleetReport,
    HistogramStats,
    HostCost,
    HostDelta,
    HostReport,
    JobReport,
    Metric,
    MetricDelta,
    MissingHost,
    OneHostKey,
    TableStats,
    TopKey,
)
from controller.reports.outliers import key_text, series_name
from node_agent.kinds.counter_table import combine
from node_agent.protocol import FoldedStacks, KeyValue, RunState, SnapshotStats

TOP = 10


def build_report(
    results: JobResults,
    *,
    spans: Mapping[str, float],
    reasons: Mapping[str, str | None],
    top: int = TOP,
) -> JobReport:
    """A report over results in memory (tests, tools): digests them, then build()."""
    return build(input_of(results, spans=spans, reasons=reasons), top=top)[0]


def input_of(
    results: JobResults, *, spans: Mapping[str, float], reasons: Mapping[str, str | None]
) -> ReportInput:
    hosts = []
    for h in results.hosts:
        run, details = (
            digest(h.seq or 0, h.results) if h.seq is not None or h.results else (None, [])
        )
        hosts.append(
            HostInput(
                host=h.host,
                run_id=h.run_id,
                state=h.state,
                reason=reasons.get(h.run_id),
                span=spans.get(h.run_id),
                digest=run,
                load_detail=constant(details),
            )
        )
    return ReportInput(
        job_id=results.job_id, program=results.program, state=results.state, hosts=hosts
    )


@dataclass
class Analysis:
    """What the charts need beyond the report: bucket matrices, divergences, stacks."""

    series: list[Series]
    data: ReportInput

    def stacks_of(self, host: str | None) -> list[FoldedStacks] | None:
        return exports.stacks_of(self.data, host)


def histogram_stats(h: HistDigest, span: float | None) -> HistogramStats:
    return HistogramStats(
        name=h.name,
        labels=h.labels,
        unit=h.unit,
        count=h.count,
        rate_per_s=h.count / span if span else None,
        p50=h.p50,
        p90=h.p90,
        p99=h.p99,
        max=h.scale.upper(h.max_slot) if h.max_slot is not None else None,
    )


def _table_stats(
    t: TableDigest, index: int, host: HostInput, span: float | None, top: int
) -> TableStats:
    rows = t.top
    if top > len(rows) and t.rows > len(rows):
        detail = host.detail(index)
        rows = detail.top if detail is not None else rows
    return TableStats(
        name=t.name,
        key_fields=[f.name for f in t.key_fields],
        value_fields=t.value_fields,
        rows=t.rows,
        totals=t.totals,
        rates_per_s=_rates(t.totals, t.aggregations, span),
        top=[TopKey(key=k, values=v) for k, v in rows[:top]],
        truncated=t.truncated,
        aggregations=t.aggregations,
    )


def _rates(
    totals: Sequence[int], aggregations: Sequence[str] | None, span: float | None
) -> list[float | None] | None:
    """Per second for sums; a min, max or mean has no rate."""
    if not span:
        return None
    how = list(aggregations or [])
    return [v / span if i >= len(how) or how[i] == "sum" else None for i, v in enumerate(totals)]


def _fleet_table_stats(
    ft: FleetTable, top: Sequence[int], names: Sequence[list[KeyValue]]
) -> TableStats:
    return TableStats(
        name=ft.name,
        key_fields=ft.comparable,
        value_fields=ft.value_fields,
        rows=len(ft.hashes),
        totals=combine([list(t.totals) for t in ft.tables], ft.value_fields, ft.aggregations),
        rates_per_s=None,
        top=[
            TopKey(key=key, values=[int(v) for v in ft.sums[i]])
            for i, key in zip(top, names, strict=True)
        ],
        truncated=ft.truncated,
        aggregations=ft.aggregations,
    )


def one_host_keys(ft: FleetTable, limit: int = 50) -> list[OneHostKey]:
    """Keys (non-pid fields) that only one of the hosts having this table reports, largest
    first."""
    if len(ft.members) < 2:
        return []
    alone = np.flatnonzero(ft.hosts == 1)
    if len(alone) == 0:
        return []
    first = ft.sums[alone, 0] if ft.sums.shape[1] else np.zeros(len(alone), np.int64)
    if len(alone) > limit:  # the largest `limit`, and any ties with the last of them
        cut = np.sort(first)[-limit]
        alone, first = alone[first >= cut], first[first >= cut]
    found = [
        OneHostKey(
            table=ft.name,
            host=ft.members[int(ft.owner[i])].host,
            key=dict(zip(ft.comparable, ft.key(int(i)), strict=True)),
            values=[int(v) for v in ft.sums[i]],
        )
        for i in alone
    ]
    found.sort(key=lambda k: (-(k.values[0] if k.values else 0), k.host, str(k.key)))
    return found[:limit]


@dataclass(frozen=True)
class _Busiest:
    """A table's busiest keys over the fleet: their rows in it, hashes, texts and values."""

    rows: list[int]
    hashes: Ints
    texts: list[str]
    keys: list[list[KeyValue]]


def build(data: ReportInput, *, top: int = TOP) -> tuple[JobReport, Analysis]:
    with_data = [h for h in data.hosts if h.has_data]
    series = series_of(with_data)
    tables = [ft for n in table_names(with_data) if (ft := fleet_table(with_data, n)) is not None]
    # The fleet's busiest keys, named once, then looked up on every host.
    busiest: dict[str, _Busiest] = {}
    for ft in tables:
        idx = [int(i) for i in ft.order()[:top]]
        names = [ft.key(i) for i in idx]
        texts = [key_text(ft.comparable, k) for k in names]
        busiest[ft.name] = _Busiest(idx, ft.hashes[idx], texts, names)
    metrics: dict[str, list[Metric]] = {}
    partial: dict[str, HostReport] = {}
    for host in with_data:
        assert host.digest is not None
        span = host.span
        hstats = [histogram_stats(h, span) for h in host.digest.histograms]
        tstats = [_table_stats(t, i, host, span, top) for i, t in enumerate(host.digest.tables)]
        host_metrics = [m for s in hstats for m in ol.histogram_metrics(s)]
        for t, s in zip(host.digest.tables, tstats, strict=True):
            firsts = values_on(t, busiest[t.name].hashes)
            keys = [
                (text, float(firsts[i, 0]) if firsts.shape[1] else 0.0)
                for i, text in enumerate(busiest[t.name].texts)
            ]
            host_metrics += ol.table_metrics(s, keys, span)
        metrics[host.host] = host_metrics
        partial[host.host] = HostReport(
            host=host.host,
            state=host.state,
            reason=host.reason,
            span_s=span,
            histograms=hstats,
            tables=tstats,
            metrics=host_metrics,
            deviation={},
            cost=_cost(host.stats),
        )
    medians = ol.medians(metrics)
    for name, host_report in partial.items():
        host_report.deviation = ol.deviation(metrics[name], medians)
    scored = {
        series_name(s.name, s.labels): list(zip(s.hosts, (float(x) for x in s.js), strict=True))
        for s in series
    }
    found = ol.mad_outliers(metrics, medians) + ol.distance_outliers(scored)
    fleet = FleetReport(
        hosts=len(with_data),
        histograms=[_fleet_hist_stats(s) for s in series],
        tables=[
            _fleet_table_stats(ft, busiest[ft.name].rows, busiest[ft.name].keys) for ft in tables
        ],
        medians=medians,
    )
    report = JobReport(
        job_id=data.job_id,
        program=data.program,
        state=data.state,
        outliers=ol.ranked(found),
        hosts=[partial[h.host] for h in with_data],
        fleet=fleet,
        one_host_keys=[k for ft in tables for k in one_host_keys(ft)],
        missing=[
            MissingHost(host=h.host, state=h.state, reason=h.reason, has_data=h.has_data)
            for h in data.hosts
            if h.state is not RunState.succeeded
        ],
    )
    return report, Analysis(series=series, data=data)


def _fleet_hist_stats(s: Series) -> HistogramStats:
    merged = dense_histogram(s.name, s.unit, s.labels, sparse(s.fleet), s.scale)
    return histogram_stats(merged, None)


def job_report(
    *, session: Session, job: Job, top: int = TOP, later: store.Later | None = None
) -> JobReport:
    return job_report_with_analysis(session=session, job=job, top=top, later=later)[0]


def job_report_with_analysis(
    *, session: Session, job: Job, top: int = TOP, later: store.Later | None = None
) -> tuple[JobReport, Analysis]:
    """The report from the runs' stored digests (made now, in memory, for runs that have none
    yet: handed to `later` to store)."""
    return build(store.report_input(session=session, job=job, later=later), top=top)


def compare(base: JobReport, other: JobReport) -> CompareReport:
    """Host by host, every metric either job has: base, other, other - base, other / base."""
    a = {h.host: h for h in base.hosts}
    b = {h.host: h for h in other.hosts}
    hosts: list[HostDelta] = []
    for name in sorted(set(a) | set(b)):
        ma = {m.id: m for m in a[name].metrics} if name in a else {}
        mb = {m.id: m for m in b[name].metrics} if name in b else {}
        deltas = []
        for mid in list(ma) + [k for k in mb if k not in ma]:
            x, y = ma.get(mid), mb.get(mid)
            ref = x or y
            assert ref is not None
            bv, ov = (x.value if x else None), (y.value if y else None)
            deltas.append(
                MetricDelta(
                    id=mid,
                    label=ref.label,
                    unit=ref.unit,
                    base=bv,
                    other=ov,
                    delta=ov - bv if bv is not None and ov is not None else None,
                    ratio=ov / bv if bv and ov is not None else None,
                )
            )
        hosts.append(HostDelta(host=name, in_base=name in a, in_other=name in b, metrics=deltas))
    return CompareReport(
        base=base.job_id,
        other=other.job_id,
        program_base=base.program,
        program_other=other.program,
        hosts=hosts,
    )


def _cost(stats: SnapshotStats | None) -> HostCost | None:
    return None if stats is None else HostCost.model_validate(stats, from_attributes=True)
