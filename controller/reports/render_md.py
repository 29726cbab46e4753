"""A report as Markdown for tickets: outliers first, then missing hosts and per-host tables.

Every name in a report comes from a traced host, so each is escaped as Markdown text: no raw
HTML, no link, no emphasis, no heading or list it did not write itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from controller.reports.analysis import human
from controller.reports.models import HistogramStats, JobReport, TableStats
from controller.reports.outliers import series_name
from node_agent.safe_text import printable

# Inline syntax: code, emphasis, links and images, raw HTML and entities, table cells, headings.
_INLINE = re.compile(r"([\\`*_\[\]<>#|~&])")
# What opens a block where a text starts a line or a list item: lists, quotes, rules, headings.
_BLOCK_START = re.compile(r"^(\d+)([.)])|^([-+=])")


class Md(str):
    """Markdown written here (emphasis of our own): passed through as is."""


def md_text(value: object, *, block_start: bool = False) -> str:
    """Untrusted text as literal Markdown: control characters and markup escaped."""
    text = _INLINE.sub(r"\\\1", printable(str(value)))
    if block_start:
        text = _BLOCK_START.sub(lambda m: f"{m[1]}\\{m[2]}" if m[1] else f"\\{m[3]}", text.lstrip())
    return text


def _cell(value: object) -> str:
    return value if isinstance(value, Md) else md_text(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    return [
        "| " + " | ".join(_cell(h) for h in header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows),
    ]


def _in(value: int | None, unit: str) -> str:
    return human(value, unit) if value is not None else "-"


def _rate(rate: float | None) -> str:
    return f"{rate:,.1f}/s" if rate is not None else "-"


def _hist_row(who: str, h: HistogramStats) -> list[object]:
    p = [_in(v, h.unit) for v in (h.p50, h.p90, h.p99, h.max)]
    return [who, h.count, _rate(h.rate_per_s), *p]


def _table_row(who: str, t: TableStats) -> list[object]:
    rates = ", ".join("-" if r is None else f"{r:,.1f}/s" for r in t.rates_per_s or []) or "-"
    return [who, t.rows, ", ".join(str(v) for v in t.totals), rates]


def render_md(report: JobReport) -> str:
    title = md_text(f"{report.job_id} ({report.program}, {report.state.value})")
    lines = [f"# Report: job {title}", ""]
    lines.append("## Outliers")
    lines += [f"- {md_text(o.sentence, block_start=True)}" for o in report.outliers] or ["- none"]
    if report.missing:
        lines += ["", "## Hosts without complete results"]
        lines += [
            f"- {md_text(m.host, block_start=True)}: {m.state.value}"
            + (f" ({md_text(m.reason)})" if m.reason else "")
            + ("" if m.has_data else ", no data")
            for m in report.missing
        ]
    for fleet_hist in report.fleet.histograms:
        series = series_name(fleet_hist.name, fleet_hist.labels)
        rows = [
            _hist_row(host.host, h)
            for host in report.hosts
            for h in host.histograms
            if series_name(h.name, h.labels) == series
        ]
        lines += ["", f"## {md_text(series)} ({md_text(fleet_hist.unit)})", ""]
        header = ["host", "count", "rate", "p50", "p90", "p99", "max"]
        lines += _table(header, [*rows, _hist_row(Md("**fleet**"), fleet_hist)])
    for fleet_table in report.fleet.tables:
        rows = [
            _table_row(host.host, t)
            for host in report.hosts
            for t in host.tables
            if t.name == fleet_table.name
        ]
        fields = ", ".join(fleet_table.value_fields)
        lines += ["", f"## {md_text(fleet_table.name)}", ""]
        lines += _table(["host", "rows", f"total ({fields})", "rate"], rows)
        lines += ["", "Top keys over the fleet:", ""]
        lines += _table(
            [*fleet_table.key_fields, *fleet_table.value_fields],
            [[*k.key, *k.values] for k in fleet_table.top],
        )
    if costs := cost_rows(report):
        lines += ["", "## What the trace cost each host", ""]
        lines += _table(COST_HEADER, costs)
    if report.one_host_keys:
        lines += ["", "## Keys seen on one host only", ""]
        lines += _table(
            ["table", "host", "key", "count"],
            [
                [k.table, k.host, " ".join(f"{f}={v}" for f, v in k.key.items()), k.values[0]]
                for k in report.one_host_keys
            ],
        )
    methods = f"Percentiles: {report.percentile_method}. Outliers: {report.outlier_method}."
    lines += ["", f"_{md_text(methods)}_"]
    return "\n".join(lines) + "\n"


COST_HEADER = [
    "host",
    "CPU (BPF programs)",
    "events/s",
    "BPF run time",
    "agent CPU",
    "lost",
    "attach point",
]


def cost_rows(report: JobReport) -> list[list[object]]:
    """One row per host whose snapshots said what the trace cost it."""
    return [
        [
            host.host,
            "-" if c.overhead_pct is None else f"{c.overhead_pct:.2f} %",
            f"{c.events_per_s:,.0f}",
            f"{c.bpf_run_time_s:.3f} s ({c.bpf_runs:,} runs)",
            f"{c.agent_cpu_s:.2f} s",
            f"{c.events_lost:,}",
            c.attach or "-",
        ]
        for host in report.hosts
        if (c := host.cost) is not None and (c.bpf_runs or c.overhead_pct is not None or c.attach)
    ]
