"""A schedule's trend in the console: a metric picker, the hosts overlaid in `svg#trend`, a
chart per host, and the values with their units. Every dot links to the job behind it."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import Response
from markupsafe import Markup
from sqlalchemy.orm import Session

from controller.console.sessions import Visitor
from controller.console.web import page, redirect
from controller.reports.trend_chart import MAX_CHART_HOSTS, line_chart, utc, value_text
from controller.schedules.models import Schedule
from controller.schedules.trend import BadMetric, Metric, ScheduleTrend, offered, trend

# Okabe-Ito, as console.css defines them for light and dark: they survive colour blindness.
PALETTE = tuple(f"var(--oi-{i})" for i in range(1, 8))


def job_url(job_id: str) -> str:
    return f"/jobs/{job_id}"


def url(base: str, metric: str, hosts: list[str] | None = None) -> str:
    query: list[tuple[str, str]] = [("metric", metric)] + [("host", h) for h in hosts or []]
    return f"{base}?{urlencode(query)}"


def charts(found: ScheduleTrend, name: str) -> dict[str, Any]:
    """The overlay of every shown host, and one chart per host in the overlay's colour."""
    label = f"{found.metric} per host for schedule {name}"
    overlay = line_chart(found, label, link=job_url, palette=PALETTE, svg_id="trend")
    per_host = []
    for k, series in enumerate(found.series[:MAX_CHART_HOSTS]):
        alone = found.model_copy(update={"series": [series]})
        colour = (PALETTE[k % len(PALETTE)],)
        svg = line_chart(alone, f"{found.metric} on {series.host}", link=job_url, palette=colour)
        known = [p.value for p in series.points if p.value is not None]
        latest = value_text(known[-1], found.unit) if known else "no value"
        per_host.append({"host": series.host, "svg": Markup(svg), "latest": latest})
    return {"overlay": Markup(overlay), "per_host": per_host}


def table(found: ScheduleTrend) -> dict[str, Any]:
    """Slots down, the charted hosts across, each value with its unit."""
    series = found.series[:MAX_CHART_HOSTS]
    cells: dict[tuple[str, datetime, str], str] = {}
    for s in series:
        for p in s.points:
            shown = "—" if p.value is None else value_text(p.value, found.unit)
            cells[(s.host, utc(p.slot), p.job_id)] = shown
    slots = sorted({(utc(p.slot), p.job_id) for s in series for p in s.points}, reverse=True)
    rows = [
        {"slot": at, "job": job, "cells": [cells.get((s.host, at, job), "—") for s in series]}
        for at, job in slots
    ]
    return {"hosts": [s.host for s in series], "rows": rows}


def show(
    request: Request,
    who: Visitor,
    *,
    session: Session,
    schedule: Schedule,
    base: str,
    metric: str,
    hosts: list[str],
    limit: int,
) -> Response:
    metrics = offered(session=session, schedule=schedule)
    context: dict[str, Any] = {
        "schedule": schedule,
        "base": base,
        "back": base.removesuffix("/trend"),
        "metrics": metrics,
        "metric": metric,
        "chosen": hosts,
        "every": [],
        "found": None,
        "error": None,
        "url": url,
    }
    if not metric:
        if metrics:  # the page's address always names its metric, so it can be shared
            return redirect(url(base, metrics[0], hosts))
        return page(request, "schedule_trend.html", who, **context)
    try:
        parsed = Metric.parse(metric)
    except BadMetric as exc:
        context["error"] = str(exc)
        return page(request, "schedule_trend.html", who, status=422, **context)
    found = trend(session=session, schedule=schedule, metric=parsed, raw=metric, limit=limit)
    context["every"] = [s.host for s in found.series]
    if hosts:
        wanted = set(hosts)
        found = found.model_copy(update={"series": [s for s in found.series if s.host in wanted]})
    context |= {"found": found, "more": max(0, len(found.series) - MAX_CHART_HOSTS)}
    context |= charts(found, schedule.name) | table(found)
    return page(request, "schedule_trend.html", who, **context)
