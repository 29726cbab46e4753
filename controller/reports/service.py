"""Build a job's report from its stored results, and compare two jobs host by host."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controller.jobs.models import Job, JobResults, SnapshotRow
from controller.jobs.results import job_results
from controller.reports import outliers as ol
from controller.reports.analysis import histogram_stats, one_host_keys, project, table_stats
from controller.reports.models import (
    CompareReport,
    FleetReport,
    HostDelta,
    HostReport,
    JobReport,
    Metric,
    MetricDelta,
    MissingHost,
)
from node_agent.protocol import CounterTable, KeyValue, Log2Histogram, RunState

TOP = 10


def run_spans(*, session: Session, job_id: str) -> dict[str, float]:
    """Seconds from each run's first snapshot interval_start to its last interval_end."""
    rows = session.execute(
        select(
            SnapshotRow.run_id,
            func.min(SnapshotRow.interval_start),
            func.max(SnapshotRow.interval_end),
        )
        .where(SnapshotRow.job_id == job_id)
        .group_by(SnapshotRow.run_id)
    ).all()
    return {run_id: end - start for run_id, start, end in rows if end > start}


def job_report(*, session: Session, job: Job, top: int = TOP) -> JobReport:
    return job_report_with_results(session=session, job=job, top=top)[0]


def job_report_with_results(
    *, session: Session, job: Job, top: int = TOP
) -> tuple[JobReport, JobResults]:
    """The report and the results it was built from (charts and exports need the buckets)."""
    results = job_results(session=session, job=job)
    reasons = {run.id: run.reason for run in job.runs}
    report = build_report(
        results, spans=run_spans(session=session, job_id=job.id), reasons=reasons, top=top
    )
    return report, results


def _fleet_keys(tables: list[CounterTable], top: int) -> dict[str, list[tuple[KeyValue, ...]]]:
    """The busiest non-pid keys of each table over the whole fleet."""
    sums: dict[str, dict[tuple[KeyValue, ...], int]] = {}
    for table in tables:
        have = sums.setdefault(table.name, {})
        for key, values in project(table).items():
            have[key] = have.get(key, 0) + (values[0] if values else 0)
    return {
        name: [k for k, _ in sorted(keys.items(), key=lambda kv: (-kv[1], str(kv[0])))[:top]]
        for name, keys in sums.items()
    }


def build_report(
    results: JobResults,
    *,
    spans: Mapping[str, float],
    reasons: Mapping[str, str | None],
    top: int = TOP,
) -> JobReport:
    with_data = [h for h in results.hosts if h.results]
    all_tables = [r for h in with_data for r in h.results if isinstance(r, CounterTable)]
    fleet_keys = _fleet_keys(all_tables, top)
    metrics: dict[str, list[Metric]] = {}
    hists: dict[str, list[Log2Histogram]] = {}
    tables_of: dict[str, dict[str, CounterTable]] = {}
    partial: dict[str, HostReport] = {}
    for host in with_data:
        span = spans.get(host.run_id)
        hist_list = [r for r in host.results if isinstance(r, Log2Histogram)]
        table_list = [r for r in host.results if isinstance(r, CounterTable)]
        hstats = [histogram_stats(h, span) for h in hist_list]
        tstats = [table_stats(t, span, top) for t in table_list]
        host_metrics = [m for s in hstats for m in ol.histogram_metrics(s)]
        for t, s in zip(table_list, tstats, strict=True):
            host_metrics += ol.table_metrics(t, s, fleet_keys.get(t.name, []), span)
            tables_of.setdefault(t.name, {})[host.host] = t
        metrics[host.host] = host_metrics
        hists[host.host] = hist_list
        partial[host.host] = HostReport(
            host=host.host,
            state=host.state,
            reason=reasons.get(host.run_id),
            span_s=span,
            histograms=hstats,
            tables=tstats,
            metrics=host_metrics,
            deviation={},
        )
    medians = ol.medians(metrics)
    for name, report in partial.items():
        report.deviation = ol.deviation(metrics[name], medians)
    found = ol.mad_outliers(metrics, medians) + ol.distance_outliers(
        hists, [r for r in results.merged if isinstance(r, Log2Histogram)]
    )
    fleet = FleetReport(
        hosts=len(with_data),
        histograms=[
            histogram_stats(r, None) for r in results.merged if isinstance(r, Log2Histogram)
        ],
        tables=[table_stats(r, None, top) for r in results.merged if isinstance(r, CounterTable)],
        medians=medians,
    )
    return JobReport(
        job_id=results.job_id,
        program=results.program,
        state=results.state,
        outliers=ol.ranked(found),
        hosts=[partial[h.host] for h in with_data],
        fleet=fleet,
        one_host_keys=[k for per in tables_of.values() for k in one_host_keys(per)],
        missing=[
            MissingHost(
                host=h.host,
                state=h.state,
                reason=reasons.get(h.run_id),
                has_data=bool(h.results),
            )
            for h in results.hosts
            if h.state is not RunState.succeeded
        ],
    )


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
