"""A report as one self-contained HTML page: inline CSS and SVG only, no script, no URL."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np

from controller.reports import svg
from controller.reports.analysis import human
from controller.reports.digest import Ints
from controller.reports.flame import MAX_DEPTH, Layout, layout
from controller.reports.fleet import Series
from controller.reports.models import HistogramStats, JobReport, TableStats
from controller.reports.outliers import key_text, series_name
from controller.reports.render_md import COST_HEADER, cost_rows
from controller.reports.service import Analysis
from node_agent.protocol import FoldedStacks
from node_agent.safe_text import printable

MAX_HEATMAP_ROWS = 200
MAX_OVERLAY_HOSTS = 5
MAX_HOST_CHARTS = 24
MAX_SENTENCES = 20
CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1240px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:18px 0 4px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
.outliers li{font-size:15px;margin:4px 0}.note{color:#666;font-size:12px}
.missing li{color:#a33}svg{display:block;margin:6px 0;overflow:visible}
"""


def _e(s: object) -> str:
    """Untrusted text as HTML text: control characters shown as escapes, markup escaped."""
    return escape(printable(str(s)))


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _in(v: int | None, unit: str) -> str:
    return human(v, unit) if v is not None else "-"


def _stats_row(who: str, h: HistogramStats) -> list[object]:
    rate = f"{h.rate_per_s:,.1f}/s" if h.rate_per_s is not None else "-"
    return [who, h.count, rate, *(_in(v, h.unit) for v in (h.p50, h.p90, h.p99, h.max))]


def _ranked_hosts(report: JobReport) -> list[str]:
    """Outlier hosts in rank order, then the rest by name."""
    first = list(dict.fromkeys(o.host for o in report.outliers))
    return first + sorted(h.host for h in report.hosts if h.host not in first)


def _shares_of(counts: Ints) -> dict[int, float]:
    total = float(counts.sum())
    return {int(s): float(counts[s]) / total for s in np.flatnonzero(counts)} if total else {}


def _histogram_section(report: JobReport, s: Series) -> str:
    series = series_name(s.name, s.labels)
    used = np.flatnonzero(s.fleet)
    if len(used) == 0:
        return f"<h2>{_e(series)}</h2><p class='note'>no samples</p>"
    slots = list(range(int(used[0]), int(used[-1]) + 1))
    unit = s.unit

    def label(slot: int) -> str:
        # An open top slot (a linear histogram's overflow) holds values from its bound up.
        open_top = s.scale.bounds(slot)[1] is None
        return ("≥" if open_top else "≤") + human(s.scale.upper(slot), unit)

    row_of = {h: i for i, h in enumerate(s.hosts)}
    order = [h for h in _ranked_hosts(report) if h in row_of]
    flagged = {o.host for o in report.outliers}
    note = ""
    if len(order) > MAX_HEATMAP_ROWS:
        # Too many rows to read: keep the outliers, then the hosts furthest from the fleet.
        rest = sorted((h for h in order if h not in flagged), key=lambda h: -s.js[row_of[h]])
        order = [h for h in order if h in flagged] + rest
        note = (
            f"<p class='note'>{len(order) - MAX_HEATMAP_ROWS} more hosts not shown; rows are the "
            "outliers, then the hosts furthest from the fleet (Jensen-Shannon).</p>"
        )
        order = order[:MAX_HEATMAP_ROWS]
    rows = [(h, _shares_of(s.matrix[row_of[h]])) for h in order]
    overlay_hosts = [h for h in order if h in flagged][:MAX_OVERLAY_HOSTS] or order[:3]
    table_rows = [
        _stats_row(h.host, st)
        for h in report.hosts
        for st in h.histograms
        if series_name(st.name, st.labels) == series
    ]
    fleet_stats = next(
        (st for st in report.fleet.histograms if series_name(st.name, st.labels) == series), None
    )
    if fleet_stats is not None:
        table_rows.append(_stats_row("fleet", fleet_stats))
    return "".join(
        [
            f"<h2>{_e(series)} ({_e(unit)})</h2>",
            "<h3>Hosts by buckets</h3>",
            svg.heatmap(rows, slots, label, f"heatmap of {series}"),
            note,
            "<h3>Hosts over the fleet (normalized)</h3>",
            svg.overlay(
                _shares_of(s.fleet),
                [(h, _shares_of(s.matrix[row_of[h]])) for h in overlay_hosts],
                slots,
                label,
                f"{series}: hosts over the fleet",
            ),
            _table(["host", "count", "rate", "p50", "p90", "p99", "max"], table_rows),
        ]
    )


def _bars_of(stats: TableStats, top: int) -> list[tuple[str, float]]:
    return [
        (key_text(stats.key_fields, k.key), float(k.values[0] if k.values else 0))
        for k in stats.top[:top]
    ]


def _table_section(report: JobReport, fleet: TableStats, top: int) -> str:
    parts = [f"<h2>{_e(fleet.name)}</h2>", "<h3>Fleet: top keys</h3>"]
    parts.append(svg.bars(_bars_of(fleet, top), f"{fleet.name}: fleet top keys"))
    per_host = {h.host: t for h in report.hosts for t in h.tables if t.name == fleet.name}
    order = [h for h in _ranked_hosts(report) if h in per_host]
    for host in order[:MAX_HOST_CHARTS]:
        items = _bars_of(per_host[host], top)
        if items:
            parts += [f"<h3>{_e(host)}</h3>", svg.bars(items, f"{fleet.name}: {host} top keys")]
    if len(order) > MAX_HOST_CHARTS:
        parts.append(
            f"<p class='note'>{len(order) - MAX_HOST_CHARTS} more hosts not charted "
            "(outliers come first).</p>"
        )
    return "".join(parts)


def _stacks_of(analysis: Analysis, host: str | None) -> list[FoldedStacks]:
    return analysis.stacks_of(host) or []


def _cut_note(found: Layout) -> str:
    if not found.cut:
        return ""
    return (
        f"<p class='note'>{found.cut:,} stacks deeper than {MAX_DEPTH} frames are drawn cut "
        f"at frame {MAX_DEPTH}.</p>"
    )


def _flame_section(report: JobReport, analysis: Analysis, diff_host: str | None) -> str:
    fleet = _stacks_of(analysis, None)
    found = layout(fleet)
    if found.total == 0:
        return ""
    parts = [
        "<h2>Flame graphs</h2>",
        "<p class='note'>Icicle layout: callers on top; frames under 0.1% of the samples are "
        "left out; hover a frame for its numbers.</p>",
        f"<h3>Fleet ({found.total:,} samples)</h3>",
        _cut_note(found),
        svg.flame(found, "fleet flame graph"),
    ]
    with_stacks = [
        h for h in _ranked_hosts(report) if any(s.stacks for s in _stacks_of(analysis, h))
    ]
    chosen = diff_host if diff_host in with_stacks else (with_stacks[0] if with_stacks else None)
    if chosen is not None:
        diff = layout(_stacks_of(analysis, chosen), baseline=fleet)
        why = "chosen" if chosen == diff_host else "the top-ranked host"
        parts += [
            f"<h3>Differential: {_e(chosen)} vs the fleet ({why})</h3>",
            "<p class='note'>Widths are the host's samples; red = a larger share of the host's "
            "time than of the fleet's, blue = smaller, white = the same.</p>",
            svg.flame(diff, f"differential flame graph {chosen}"),
        ]
    for host in with_stacks[:MAX_HOST_CHARTS]:
        found = layout(_stacks_of(analysis, host))
        parts += [
            f"<h3>{_e(host)} ({found.total:,} samples)</h3>",
            svg.flame(found, f"flame graph {host}"),
        ]
    if len(with_stacks) > MAX_HOST_CHARTS:
        parts.append(
            f"<p class='note'>{len(with_stacks) - MAX_HOST_CHARTS} more hosts not drawn.</p>"
        )
    return "".join(parts)


def report_sections(
    report: JobReport, analysis: Analysis, *, top: int = 10, diff_host: str | None = None
) -> list[tuple[str, str]]:
    """The report's body as (kind, HTML) parts, outliers first: the page below, and the
    console's job page, show the same sections."""
    items = [f"<li>{_e(o.sentence)}</li>" for o in report.outliers] or ["<li>none</li>"]
    sentences = "".join(items[:MAX_SENTENCES])
    if len(items) > MAX_SENTENCES:
        # <details> folds the long tail without any script.
        rest = "".join(items[MAX_SENTENCES:])
        sentences += (
            f"<li><details><summary>{len(items) - MAX_SENTENCES} more</summary>"
            f"<ul>{rest}</ul></details></li>"
        )
    parts = [("outliers", f"<h2>Outliers</h2><ul class='outliers' id='outliers'>{sentences}</ul>")]
    if report.missing:
        missing = "".join(
            f"<li>{_e(m.host)}: {_e(m.state.value)}"
            + (f" ({_e(m.reason)})" if m.reason else "")
            + ("" if m.has_data else ", no data")
            + "</li>"
            for m in report.missing
        )
        parts.append(
            (
                "missing",
                f"<h2>Hosts without complete results</h2><ul class='missing'>{missing}</ul>",
            )
        )
    for s in analysis.series:
        parts.append(("histogram", _histogram_section(report, s)))
    for t in report.fleet.tables:
        parts.append(("table", _table_section(report, t, top)))
    if flame := _flame_section(report, analysis, diff_host):
        parts.append(("flame", flame))
    if costs := cost_rows(report):
        parts.append(
            ("costs", "<h2>What the trace cost each host</h2>" + _table(COST_HEADER, costs))
        )
    if report.one_host_keys:
        keys = _table(
            ["table", "host", "key", "count"],
            [
                [k.table, k.host, " ".join(f"{f}={v}" for f, v in k.key.items()), k.values[0]]
                for k in report.one_host_keys
            ],
        )
        parts.append(("one-host-keys", "<h2>Keys seen on one host only</h2>" + keys))
    parts.append(
        (
            "methods",
            f"<p class='note'>Percentiles: {_e(report.percentile_method)}. "
            f"Outliers: {_e(report.outlier_method)}.</p>",
        )
    )
    return parts


def render_html(
    report: JobReport, analysis: Analysis, *, top: int = 10, diff_host: str | None = None
) -> str:
    title = f"Report: job {report.job_id} ({report.program}, {report.state.value})"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"/>',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p class='note'>{len(report.hosts)} hosts with data, {len(report.missing)} without "
        "complete results.</p>",
        *(html for _, html in report_sections(report, analysis, top=top, diff_host=diff_host)),
        "</body></html>",
    ]
    return "".join(parts) + "\n"
