"""HTML report, flame graph math, OpenMetrics / folded / speedscope exports, headless Chromium."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

import pytest
from fastapi.testclient import TestClient

from controller.cli.main import build_parser
from controller.jobs.merge import merge_results
from controller.jobs.models import HostResult, JobResults, JobState
from controller.reports import exports
from controller.reports.flame import Frame, layout
from controller.reports.models import JobReport
from controller.reports.render_html import render_html
from controller.reports.service import Analysis, build, input_of
from controller.reports.svg import diff_color
from node_agent.protocol import (
    CounterTable,
    KeyField,
    KeyValue,
    Log2Histogram,
    Result,
    RunState,
)
from tests.controller.browser import screenshot
from tests.controller.conftest import Feeder, Tokens
from tests.controller.support import host_result, stacks
from tests.controller.test_reports import _fleet_job

ODD = "web-4"
VOID = {"meta", "br", "hr", "img", "input", "link"}


def _fleet_analysed() -> tuple[JobReport, Analysis, JobResults]:
    """Five hosts alike but web-4 (slow waits, opens /tmp/hot, spins in `spin`); web-5 failed."""
    hosts: list[HostResult] = []
    for i in range(5):
        odd = f"web-{i}" == ODD
        opens: list[tuple[list[KeyValue], list[int]]] = [([100 + i, "/etc/hosts"], [20 + i])]
        if odd:
            opens.insert(0, ([999, "/tmp/hot"], [5000]))
        cpu = {"main;work;compute": 80 + i, "main;io": 20}
        if odd:
            cpu["main;spin"] = 300
        results: list[Result] = [
            Log2Histogram(name="runqlat", unit="usec", buckets=[(12 if odd else 8, 100), (9, 10)]),
            CounterTable(
                name="opens",
                key_fields=[KeyField(name="pid", type="int"), KeyField(name="path")],
                rows=opens,
                total_rows=len(opens),
            ),
            stacks(cpu),
        ]
        hosts.append(host_result(f"web-{i}", results, run_id=f"run-{i}"))
    hosts.append(host_result("web-5", state=RunState.failed, run_id="run-5"))
    merged = merge_results([(h.host, h.results) for h in hosts if h.results])
    job = JobResults(
        job_id="j1", program="cpu_profile", state=JobState.partial, hosts=hosts, merged=merged
    )
    spans = {f"run-{i}": 2.0 for i in range(5)}
    data = input_of(job, spans=spans, reasons={"run-5": "compile error: no map"})
    report, analysis = build(data)
    return report, analysis, job


class _Balance(HTMLParser):
    """Fails on a closing tag that does not match the open one."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        pass

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, (tag, self.open[-5:])
        self.open.pop()


def _svgs(page: str) -> list[ElementTree.Element]:
    return [ElementTree.fromstring(s) for s in re.findall(r"<svg.*?</svg>", page, re.S)]


def test_html_is_well_formed_offline_and_outliers_come_first() -> None:
    report, analysis, _ = _fleet_analysed()
    page = render_html(report, analysis)
    checker = _Balance()
    checker.feed(page)
    checker.close()
    assert checker.open == []
    ElementTree.fromstring(page.removeprefix("<!DOCTYPE html>"))  # XML-clean as a whole too
    assert not re.search(r"https?://|//cdn|@import|<script|<link", page, re.I)
    sentence = next(o.sentence for o in report.outliers if o.metric.startswith("hist:runqlat:p"))
    assert sentence.startswith(f"{ODD}: ")
    assert page.index(sentence) < page.index("<svg")
    assert "web-5: failed (compile error: no map), no data" in page
    labels = [s.get("aria-label") for s in _svgs(page)]
    hosts = [f"web-{i}" for i in range(5)]
    ranked = [ODD] + [h for h in hosts if h != ODD]  # outlier hosts first
    assert labels == [
        "heatmap of runqlat",
        "runqlat: hosts over the fleet",
        "opens: fleet top keys",
        *(f"opens: {h} top keys" for h in ranked),
        "fleet flame graph",
        f"differential flame graph {ODD}",
        *(f"flame graph {h}" for h in ranked),
    ]


def test_long_outlier_lists_fold_after_twenty() -> None:
    report, analysis, _ = _fleet_analysed()
    many = report.model_copy(update={"outliers": report.outliers * 5})
    page = render_html(many, analysis)
    shown = page.split("<details>")[0].count("<li>")
    assert shown == 21  # 20 sentences, then the item holding the folded rest
    assert f"<summary>{len(many.outliers) - 20} more</summary>" in page


def test_heatmap_cells_and_overlay_lines() -> None:
    report, analysis, _ = _fleet_analysed()
    heat, over = _svgs(render_html(report, analysis))[:2]
    titles = [t.text or "" for t in heat.iter("title")]
    # 100 of 110 samples of web-4 wait in slot 12 (<= 4,095 usec = 4.1 ms).
    assert f"{ODD} ≤4.1 ms: 90.9% of its samples" in titles
    assert "web-0 ≤255 us: 90.9% of its samples" in titles
    assert [p.findtext("title") for p in over.iter("path") if p.findtext("title")] == [ODD]


def test_flame_layout_widths_are_counts_and_children_sit_in_parents() -> None:
    found = layout([stacks({"a;b": 3, "a;c": 1, "d": 4})])
    assert found.total == 8
    assert found.frames == [
        Frame("a", 0, 0, 4, -1),
        Frame("b", 1, 0, 3, 0),
        Frame("c", 1, 3, 1, 0),
        Frame("d", 0, 4, 4, -1),
    ]
    assert [found.path(i) for i in range(4)] == [("a",), ("a", "b"), ("a", "c"), ("d",)]
    for f in found.frames:
        if f.depth:
            parent = found.frames[f.parent]
            assert parent.start <= f.start and f.start + f.count <= parent.start + parent.count
    # a;c is 1/8 = 12.5% of the samples: under a 20% floor it goes.
    floor = layout([stacks({"a;b": 3, "a;c": 1, "d": 4})], 0.2)
    assert [floor.path(i) for i in range(len(floor.frames))] == [("a",), ("a", "b"), ("d",)]


def test_differential_sign_and_colour() -> None:
    host = stacks({"a;b": 1, "d": 3})
    found = layout([host], baseline=[stacks({"a;b": 4, "d": 4})])
    delta = {found.path(i): f.delta for i, f in enumerate(found.frames)}
    assert delta == {("a",): -0.25, ("a", "b"): -0.25, ("d",): 0.25}
    assert diff_color(0.25, 0.25) == "rgb(255,55,55)"  # more time on the host: red
    assert diff_color(-0.25, 0.25) == "rgb(55,55,255)"  # less: blue
    assert diff_color(0.0, 0.25) == "rgb(255,255,255)"  # the same share: white


def test_openmetrics_parses_back() -> None:
    _, analysis, _ = _fleet_analysed()
    text = exports.openmetrics(analysis.data)
    assert text.endswith("# EOF\n") and text.count("# EOF") == 1
    assert "# TYPE fleettrace_runqlat histogram" in text
    series: dict[str, list[tuple[float, int]]] = {}
    counts: dict[str, int] = {}
    line_re = re.compile(r'^(\w+)\{host="([^"]+)"(?:,le="([^"]+)")?\} (\d+)$')
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = line_re.match(line)
        assert m, line
        name, host, le, value = m.groups()
        if name.endswith("_bucket"):
            series.setdefault(host, []).append((float(le), int(value)))
        else:
            assert name == "fleettrace_runqlat_count"
            counts[host] = int(value)
    assert set(series) == {f"web-{i}" for i in range(5)}
    for host, buckets in series.items():
        les = [le for le, _ in buckets]
        values = [v for _, v in buckets]
        assert les == sorted(les) and les[-1] == float("inf")
        assert values == sorted(values) and values[-1] == counts[host] == 110
        # Same buckets on every series: slots 8, 9, 12 upper bounds.
        assert les[:-1] == [255.0, 511.0, 4095.0]
    assert dict(series[ODD])[4095.0] == 110 and dict(series[ODD])[511.0] == 10


def test_folded_and_speedscope() -> None:
    _, analysis, _ = _fleet_analysed()
    data = analysis.data
    merged = exports.stacks_of(data, None)
    assert merged is not None
    lines = exports.folded(merged).splitlines()
    assert "main;spin 300" in lines
    assert "main;io 100" in lines  # 20 on each of 5 hosts
    one = exports.stacks_of(data, ODD)
    assert one is not None and "main;io 20" in exports.folded(one).splitlines()
    assert exports.stacks_of(data, "nope") is None
    doc = exports.speedscope(data).model_dump(by_alias=True)
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    frames = [f["name"] for f in doc["shared"]["frames"]]
    assert len(frames) == len(set(frames)) == 5
    profiles = doc["profiles"]
    assert [p["name"] for p in profiles] == [f"web-{i}" for i in range(5)]
    for p in profiles:
        assert p["type"] == "sampled" and len(p["samples"]) == len(p["weights"])
        assert p["endValue"] - p["startValue"] == sum(p["weights"])
        assert all(0 <= i < len(frames) for s in p["samples"] for i in s)
    odd = profiles[4]
    spin = [frames[i] for i in odd["samples"][odd["weights"].index(300)]]
    assert spin == ["main", "spin"]


def test_route_serves_html_and_exports(
    client: TestClient,
    tokens: Tokens,
    feeder: Feeder,
    tmp_path: Path,
) -> None:
    job_id, names = _fleet_job(client, tokens, feeder, hot=5000)
    viewer = tokens.headers("viewer")
    page = client.get(f"/v1/jobs/{job_id}/report?format=html", headers=viewer)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f"{names[4]}: p50 runqlat 16.1x the fleet median (4.1 ms vs 255 us)" in page.text
    om = client.get(f"/v1/jobs/{job_id}/report?format=openmetrics", headers=viewer)
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert f'fleettrace_runqlat_count{{host="{names[4]}"}} 100' in om.text
    folded = client.get(f"/v1/jobs/{job_id}/report?format=folded", headers=viewer)
    assert folded.status_code == 200 and folded.text == ""  # runqlat has no stacks
    nope = client.get(f"/v1/jobs/{job_id}/report?format=folded&host=nope", headers=viewer)
    assert nope.status_code == 404
    scope = client.get(f"/v1/jobs/{job_id}/report?format=speedscope", headers=viewer).json()
    assert scope["profiles"] == []
    bad = client.get(f"/v1/jobs/{job_id}/report?format=pdf", headers=viewer)
    assert bad.status_code == 422
    out = str(tmp_path / "r.html")
    args = build_parser().parse_args(
        ["report", job_id, "--token", tokens.token("viewer"), "--format", "html", "-o", out]
    )
    args.http = client
    assert args.func(args) == 0
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")


@pytest.mark.root
def test_chromium_draws_the_page_without_errors(tmp_path: Path) -> None:
    report, analysis, _ = _fleet_analysed()
    page = tmp_path / "report.html"
    page.write_text(render_html(report, analysis), encoding="utf-8")
    width, height, colours = screenshot(page, tmp_path, (1200, 2000))
    assert (width, height) == (1200, 2000)
    # Heatmap blues, flame warm colours, text: a drawn page has many colours, a blank one 1.
    assert len(colours) > 50
