"""A schedule's trend as a line chart (one line per host over the slots) and a self-contained
HTML page around it: inline CSS and SVG only, no script, no URL."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from datetime import datetime, timezone
from html import escape as _html_escape

from controller.reports.analysis import NS_PER, human
from controller.reports.render_html import CSS
from controller.reports.svg import HOST_COLORS, Svg
from controller.schedules.trend import ScheduleTrend, TrendSeries
from node_agent.safe_text import printable

LEFT, TOP, WIDTH, HEIGHT = 80, 24, 720, 240
MAX_CHART_HOSTS = 21  # 7 colours x 3 dash patterns: every line stays distinct
DASHES = ("", "6 3", "2 2")
MISSING = "#999"


def escape(text: str) -> str:
    """Untrusted text as HTML text: control characters shown as escapes, markup escaped."""
    return _html_escape(printable(text))


def utc(at: datetime) -> datetime:
    # SQLite hands back naive datetimes; they are stored as UTC.
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)


def exact(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.4g}"


def tick_text(value: float, unit: str | None) -> str:
    """An axis tick in people's units: 2.5 ms, 1.2k calls, 40 events."""
    unit = unit or ""
    if value == 0:
        return "0"
    if unit in NS_PER:
        return human(value, unit)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.3g}{suffix} {unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def value_text(value: float, unit: str | None) -> str:
    """A value exactly, with its unit, and in people's units for a time: 2,500 us (2.5 ms)."""
    if not unit:
        return exact(value)
    said = f"{exact(value)} {unit}"
    spoken = human(value, unit) if unit in NS_PER else said
    return said if spoken == said else f"{said} ({spoken})"


def nice_step(span: float, ticks: int = 4) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that splits span in at most `ticks`."""
    raw = span / ticks
    mag = 10.0 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))


def y_range(values: Sequence[float]) -> tuple[float, float, float]:
    """Bottom, top and tick step of the value axis; zero is always on it."""
    low, high = min(0.0, *values), max(0.0, *values)
    if high == low:
        high = low + 1
    step = nice_step(high - low)
    return math.floor(low / step + 1e-9) * step, math.ceil(high / step - 1e-9) * step, step


def time_text(at: datetime, span_s: float) -> str:
    if span_s >= 86400:
        return at.strftime("%m-%d %H:%M")
    return at.strftime("%H:%M:%S" if span_s < 120 else "%H:%M")


def line_chart(
    trend: ScheduleTrend,
    label: str,
    *,
    link: Callable[[str], str] | None = None,
    palette: Sequence[str] = HOST_COLORS,
    svg_id: str | None = None,
) -> str:
    """x = slot time (UTC), y = the metric; a polyline per host through its known values, a dot
    per value with its numbers as a tooltip, a grey dot on the axis where a host has no value.
    With `link`, each dot is a link to link(job id) (the console's chart); `palette` colours
    the hosts in turn."""
    series = trend.series[:MAX_CHART_HOSTS]
    values = [p.value for s in series for p in s.points if p.value is not None]
    times = [utc(p.slot) for s in series for p in s.points]
    height = max(TOP + HEIGHT + 48, TOP + 16 * len(series) + 8)
    svg = Svg(LEFT + WIDTH + 200, height, label, svg_id)
    if not times:
        svg.text(LEFT, TOP, "no runs with results yet")
        return svg.render()
    t0, t1 = min(times), max(times)
    span_s = (t1 - t0).total_seconds()
    bottom, top, step = y_range(values or [0.0])

    def x(at: datetime) -> float:
        if span_s == 0:
            return LEFT + WIDTH / 2
        return LEFT + WIDTH * (utc(at) - t0).total_seconds() / span_s

    def y(value: float) -> float:
        return TOP + HEIGHT - HEIGHT * (value - bottom) / (top - bottom)

    base = y(max(bottom, 0.0))
    for i in range(round((top - bottom) / step) + 1):
        value = bottom + i * step
        svg.path(f"M{LEFT} {y(value):.2f}H{LEFT + WIDTH}", "#e5e5e5", 1)
        svg.text(LEFT - 6, y(value) + 4, tick_text(value, trend.unit), "end")
    ticks = min(6, len(set(times)))
    for i in range(ticks):
        at = t0 + (t1 - t0) * (i / (ticks - 1) if ticks > 1 else 0)
        svg.path(f"M{x(at):.2f} {TOP + HEIGHT}v4", "#555", 1)
        svg.text(x(at), TOP + HEIGHT + 16, time_text(at, span_s), "middle")
    svg.path(f"M{LEFT} {TOP}V{TOP + HEIGHT}H{LEFT + WIDTH}", "#555", 1)
    unit = f" ({trend.unit})" if trend.unit else ""
    svg.text(LEFT, TOP - 10, f"{trend.metric}{unit}")
    when = t0.strftime("%Y-%m-%d") if span_s < 86400 else f"{t0:%Y-%m-%d} to {t1:%Y-%m-%d}"
    svg.text(LEFT + WIDTH / 2, TOP + HEIGHT + 36, f"slot time, UTC ({when})", "middle")
    for k, s in enumerate(series):
        color, dash = palette[k % len(palette)], DASHES[k // len(palette) % 3]
        known = [p for p in s.points if p.value is not None]
        if known:
            line = [(x(p.slot), y(p.value)) for p in known if p.value is not None]
            svg.polyline(line, color, dash, s.host)
        for p in s.points:
            stamp = f"{utc(p.slot):%Y-%m-%d %H:%M:%S} UTC"
            with svg.link(link(p.job_id), job=p.job_id) if link else nullcontext():
                if p.value is None:
                    svg.circle(x(p.slot), base, 2.5, MISSING, f"{s.host} {stamp}: no value")
                else:
                    said = value_text(p.value, trend.unit)
                    svg.circle(x(p.slot), y(p.value), 3, color, f"{s.host} {stamp}: {said}")
        ly = TOP + k * 16
        svg.polyline([(LEFT + WIDTH + 16, ly + 5), (LEFT + WIDTH + 36, ly + 5)], color, dash)
        svg.text(LEFT + WIDTH + 42, ly + 9, s.host + ("" if known else " (no values)"))
    return svg.render()


def _rows(series: Sequence[TrendSeries]) -> list[tuple[datetime, str]]:
    """The table's rows: every (slot, job) any host has, oldest first."""
    return sorted({(utc(p.slot), p.job_id) for s in series for p in s.points})


def render_trend_html(trend: ScheduleTrend, schedule_name: str) -> str:
    title = f"Trend: {trend.metric} for schedule {schedule_name}"
    rows = _rows(trend.series)
    cells = {(s.host, utc(p.slot), p.job_id): p.value for s in trend.series for p in s.points}
    hosts = [s.host for s in trend.series]
    unit = f" ({trend.unit})" if trend.unit else ""
    head = "".join(f"<th>{escape(h)}</th>" for h in ["slot (UTC)", "job", *hosts])
    body = []
    for at, job in rows:
        values = [cells.get((h, at, job)) for h in hosts]
        shown = "".join(f"<td>{'-' if v is None else exact(v)}</td>" for v in values)
        body.append(f"<tr><td>{at:%Y-%m-%d %H:%M:%S}</td><td>{escape(job)}</td>{shown}</tr>")
    note = ""
    if len(hosts) > MAX_CHART_HOSTS:
        note = (
            f"<p class='note'>{len(hosts) - MAX_CHART_HOSTS} more hosts are in the table only "
            "(the chart draws the first hosts by name).</p>"
        )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"/>',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p class='note'>Schedule {escape(trend.schedule_id)}; metric {escape(trend.metric)}"
        f"{escape(unit)}; {len(rows)} slots, {len(hosts)} hosts; hover a dot for its value. "
        "Grey dots on the axis: a host without a value in that slot.</p>",
        line_chart(trend, f"{trend.metric} per host for schedule {schedule_name}"),
        note,
        f"<h2>Values{escape(unit)}</h2>",
        f"<table><tr>{head}</tr>{''.join(body)}</table>" if rows else "<p>no runs yet</p>",
        "</body></html>",
    ]
    return "".join(parts) + "\n"
