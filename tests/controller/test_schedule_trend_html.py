"""A schedule's trend as an HTML page: line chart coordinates, offline page, route and CLI."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from controller.cli.main import build_parser
from controller.reports.trend_chart import line_chart, nice_step, render_trend_html, y_range
from controller.schedules.trend import ScheduleTrend, TrendPoint, TrendSeries
from node_agent.protocol import Log2Histogram
from tests.controller.browser import screenshot
from tests.controller.conftest import Tokens
from tests.controller.test_report_html import _Balance
from tests.controller.test_schedules import _put_results, two_host_schedule

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def _trend(
    values: Mapping[str, Sequence[float | None]], unit: str | None = "events"
) -> ScheduleTrend:
    """One point per value, a minute apart, in job j0, j1, ..."""
    series = [
        TrendSeries(
            host=host,
            points=[
                TrendPoint(slot=T0 + timedelta(minutes=i), job_id=f"j{i}", value=v)
                for i, v in enumerate(vals)
            ],
        )
        for host, vals in values.items()
    ]
    return ScheduleTrend(schedule_id="sch1", metric="count:lat", unit=unit, series=series)


def _points(line: ElementTree.Element) -> list[tuple[float, float]]:
    pairs = (p.split(",") for p in (line.get("points") or "").split())
    return [(float(x), float(y)) for x, y in pairs]


def test_points_sit_where_the_values_say() -> None:
    # Values 0..40 -> axis 0..40 in steps of 10; plot box x 80..800, y 24 (top) .. 264 (zero).
    chart = ElementTree.fromstring(
        line_chart(_trend({"a": [10, 20], "b": [5, 40], "c": [None, None]}), "t")
    )
    lines = list(chart.iter("polyline"))
    plotted = [ln for ln in lines if ln.findtext("title")]  # legend samples have no title
    assert [ln.findtext("title") for ln in plotted] == ["a", "b"]  # one per host with values
    # y = 264 - 240 * v / 40 = 264 - 6v; x = 80 at the first slot, 800 a minute later.
    assert _points(plotted[0]) == [(80, 204), (800, 144)]
    assert _points(plotted[1]) == [(80, 234), (800, 24)]
    dots = {
        c.findtext("title"): (float(c.get("cx", "")), float(c.get("cy", "")))
        for c in chart.iter("circle")
    }
    assert dots["a 2024-05-01 12:01:00 UTC: 20 events"] == (800, 144)
    assert dots["b 2024-05-01 12:00:00 UTC: 5 events"] == (80, 234)
    # No value: a grey dot on the zero line, and no line for that host.
    assert dots["c 2024-05-01 12:00:00 UTC: no value"] == (80, 264)
    texts = [t.text for t in chart.iter("text")]
    for tick in ("0", "10 events", "20 events", "30 events", "40 events", "12:00:00", "12:01:00"):
        assert tick in texts
    assert "c (no values)" in texts


def test_time_axis_ticks_speak_human_units() -> None:
    chart = ElementTree.fromstring(line_chart(_trend({"a": [1500, 2500]}, "us"), "t"))
    texts = [t.text for t in chart.iter("text")]
    assert [t for t in texts if t in {"0"} or "ms" in (t or "")] == ["0", "1 ms", "2 ms", "3 ms"]
    titles = [c.findtext("title") for c in chart.iter("circle")]
    assert "a 2024-05-01 12:01:00 UTC: 2,500 us (2.5 ms)" in titles
    assert nice_step(40) == 10 and nice_step(2500) == 1000 and nice_step(0.9) == 0.25
    assert y_range([-3, 7]) == (-5, 7.5, 2.5)  # span 10 in 4 steps: 2.5


def test_page_is_offline_well_formed_and_tabulates_values() -> None:
    trend = _trend({"web-1": [10, None, 30], "web<2>": [1.5, 2, 3]})
    page = render_trend_html(trend, "nightly & co")
    checker = _Balance()
    checker.feed(page)
    checker.close()
    assert checker.open == []
    ElementTree.fromstring(page.removeprefix("<!DOCTYPE html>"))
    assert not re.search(r"https?://|//cdn|@import|<script|<link", page, re.I)
    assert "<h1>Trend: count:lat for schedule nightly &amp; co</h1>" in page
    rows = re.findall(r"<tr>(.*?)</tr>", page)
    assert rows[0] == "<th>slot (UTC)</th><th>job</th><th>web-1</th><th>web&lt;2&gt;</th>"
    assert rows[2] == "<td>2024-05-01 12:01:00</td><td>j1</td><td>-</td><td>2</td>"
    assert rows[1].endswith("<td>10</td><td>1.5</td>")
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) == 1
    assert len(ElementTree.fromstring(svgs[0]).findall("polyline[title]")) == 2


def test_empty_trend_renders_a_note() -> None:
    page = render_trend_html(_trend({}), "s")
    assert "no runs with results yet" in page and "no runs yet" in page
    ElementTree.fromstring(page.removeprefix("<!DOCTYPE html>"))


def test_route_and_cli_serve_the_page(
    client: TestClient, tokens: Tokens, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    hosts, created = two_host_schedule(client, tokens, "trendhtml")
    url = f"/v1/schedules/{created['id']}"
    for run in range(2):
        answer = client.post(f"{url}/run", headers=tokens.headers("operator"))
        job_id = answer.json()["recent"][0]["job_id"]
        results: dict[str, list[Any]] = {
            h: [Log2Histogram(name="lat", unit="us", buckets=[(4, 100 + 10 * run + i)])]
            for i, h in enumerate(hosts)
        }
        _put_results(sessions, job_id, results)
    viewer = tokens.headers("viewer")
    params = {"metric": "count:lat", "format": "html"}
    page = client.get(f"{url}/trend", params=params, headers=viewer)
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert f"for schedule {created['name']}</h1>" in page.text
    svg = ElementTree.fromstring(re.findall(r"<svg.*?</svg>", page.text, re.S)[0])
    lines = {ln.findtext("title") or "": ln for ln in svg.findall("polyline[title]")}
    assert sorted(lines) == hosts and all(len(_points(ln)) == 2 for ln in lines.values())
    assert "<td>111</td>" in page.text  # host b, second run
    # JSON stays the default; an unknown format is refused.
    plain = client.get(f"{url}/trend", params={"metric": "count:lat"}, headers=viewer)
    assert plain.headers["content-type"].startswith("application/json")
    assert [p["value"] for p in plain.json()["series"][0]["points"]] == [100, 110]
    bad = client.get(
        f"{url}/trend", params={"metric": "count:lat", "format": "pdf"}, headers=viewer
    )
    assert bad.status_code == 422
    out = tmp_path / "trend.html"
    argv = ["schedules", "trend", created["name"], "--metric", "count:lat"]
    argv += ["--format", "html", "-o", str(out), "--token", tokens.token("viewer")]
    args = build_parser().parse_args(argv)
    args.http = client
    assert args.func(args) == 0
    assert out.read_text().startswith("<!DOCTYPE html>") and "<td>111</td>" in out.read_text()


@pytest.mark.root
def test_chromium_draws_the_trend_page(tmp_path: Path) -> None:
    values = {f"web-{h}": [float(10 * h + (i % 5)) for i in range(30)] for h in range(9)}
    page = tmp_path / "trend.html"
    page.write_text(render_trend_html(_trend(values), "nightly"), encoding="utf-8")
    width, height, colours = screenshot(page, tmp_path, (1200, 900))
    assert (width, height) == (1200, 900)
    assert len(colours) > 20  # nine coloured lines, dots and text: not a blank page
