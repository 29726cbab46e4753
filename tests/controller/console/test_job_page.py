"""The job page: runs in every state, live events for a session, the report inline and its
downloads, cancel, compare; agents' text escaped. Jobs are made by the API and fed through the
real Redis stream and Ingest, on the real database."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from controller.auth import service as auth_service
from controller.jobs.streams import StreamSlots
from node_agent.protocol import ErrorCode, RunState, StateChange, TraceError
from tests.controller.conftest import Feeder, RecordingDispatcher, Tokens
from tests.controller.support import counters, register_host, snapshot, stacks, state, submit
from tests.controller.test_e2e import parse_sse
from tests.controller.test_reports import _fleet_job

Browser = Callable[[str], tuple[TestClient, str]]
HOSTILE = "<script>alert(1)</script>"
VOID = {"meta", "br", "hr", "img", "input", "link"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(self.parts) + "".join(c.text() for c in self.children)

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.walk()

    def all(self, tag: str, **attrs: str) -> list[Node]:
        """Elements by tag and attributes (`class_` matches one of the classes)."""
        want = {k.rstrip("_"): v for k, v in attrs.items()}

        def matches(n: Node) -> bool:
            for k, v in want.items():
                got = n.attrs.get(k)
                if got is None or (v not in got.split() if k == "class" else got != v):
                    return False
            return True

        return [n for n in self.walk() if n.tag == tag and matches(n)]

    def one(self, tag: str, **attrs: str) -> Node:
        found = self.all(tag, **attrs)
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]


class _Tree(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.root = Node("#root", {})
        self.open = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.open[-1].children.append(node)
        if tag not in VOID:
            self.open.append(node)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        assert self.open[-1].tag == tag, f"</{tag}> closes <{self.open[-1].tag}>"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.open[-1].parts.append(data)


def parse(html: str) -> Node:
    tree = _Tree()
    tree.feed(html)
    tree.close()
    return tree.root


def states_on(html: str) -> dict[str, str]:
    return {
        tr.attrs["data-host"]: tr.one("td", class_="state").text().strip()
        for tr in parse(html).all("tr")
        if "data-host" in tr.attrs
    }


def _hosts(client: TestClient, tokens: Tokens, n: int, prefix: str = "jp") -> list[str]:
    names = [f"{prefix}{uuid.uuid4().hex[:6]}-{i}" for i in range(n)]
    for name in names:
        register_host(client, tokens.headers("admin"), name)
    return names


def _runs(job: dict[str, Any]) -> dict[str, str]:
    return {r["host"]: r["id"] for r in job["runs"]}


def test_the_page_shows_every_run_state_and_why(
    client: TestClient, tokens: Tokens, feeder: Feeder, browser: Browser
) -> None:
    names = _hosts(client, tokens, 8)
    job = submit(client, tokens.headers("operator"), targets={"hosts": names}, duration_s=30)
    runs = _runs(job)
    pending, running, done, failed, timed, unsupported, cancelled, expired = names
    feeder(
        unsupported,
        state(runs[unsupported], "unsupported", "needs perf_events: <not here>"),
        job_id=job["id"],
    )
    feeder(cancelled, state(runs[cancelled], "cancelled", "cancelled by agent"), job_id=job["id"])
    feeder(expired, state(runs[expired], "expired", "never started"), job_id=job["id"])
    feeder(running, state(runs[running], "running"), job_id=job["id"])
    feeder(
        done,
        state(runs[done], "running"),
        snapshot(runs[done], 0),
        snapshot(runs[done], 1, final=True),
        state(runs[done], "succeeded"),
        job_id=job["id"],
    )
    error = TraceError(code=ErrorCode.compile_error, message=HOSTILE, detail="line 1: & <b>")
    change = StateChange(run_id=runs[failed], state=RunState.failed, reason=HOSTILE, error=error)
    feeder(failed, change, job_id=job["id"])
    feeder(timed, state(runs[timed], "running"), state(runs[timed], "timed_out"), job_id=job["id"])
    viewer, _ = browser("viewer")
    page = viewer.get(f"/jobs/{job['id']}")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert states_on(page.text) == {
        pending: "pending",
        running: "running",
        done: "succeeded",
        failed: "failed",
        timed: "timed_out",
        unsupported: "unsupported",
        cancelled: "cancelled",
        expired: "expired",
    }
    assert {state.value for state in RunState} == set(states_on(page.text).values())
    tree = parse(page.text)
    assert tree.one("span", id="job-state").text() == "running"
    done_row = tree.one("tr", **{"data-host": done})
    assert done_row.one("td", class_="snapshots").text() == "2"
    assert done_row.one("td", class_="finished").text().endswith("UTC")
    why = tree.one("tr", **{"data-host": failed}).one("td", class_="why").text()
    assert HOSTILE in why and f"compile_error: {HOSTILE}" in why and "line 1: & <b>" in why
    # The text is there as text: never as markup.
    assert HOSTILE not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<b>" not in page.text
    unsupported_why = tree.one("tr", **{"data-host": unsupported}).one("td", class_="why")
    assert unsupported_why.text().strip() == "needs perf_events: <not here>"
    assert not tree.all("section", id="report")  # not final: the page waits for it
    summary = tree.one("table", class_="summary").text()
    assert "syscalls" in summary and "30 s" in summary and "test-operator" in summary
    assert tree.one("article", id="job").attrs["data-final"] == "false"
    assert tree.one("script", src="/static/job.js") is not None


def test_an_unknown_job_is_a_404_page(browser: Browser) -> None:
    viewer, _ = browser("viewer")
    missing = str(uuid.uuid4())
    for path in ("", "/report", "/download/csv", "/events"):
        got = viewer.get(f"/jobs/{missing}{path}")
        assert got.status_code == 404, path
        assert got.headers["content-type"].startswith("text/html")
        assert f"no job {missing}" in got.text


def test_events_stream_for_a_session_as_the_api_streams_them(
    app: FastAPI, client: TestClient, tokens: Tokens, feeder: Feeder, browser: Browser
) -> None:
    names = _hosts(client, tokens, 2)
    job = submit(client, tokens.headers("operator"), targets={"hosts": names})
    for name, run in _runs(job).items():
        feeder(
            name,
            state(run, "running"),
            snapshot(run, 0, [counters("syscalls", {"read": 3})], final=True),
            state(run, "succeeded"),
            job_id=job["id"],
        )
    viewer, _ = browser("viewer")
    with viewer.stream("GET", f"/jobs/{job['id']}/events") as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        mine = answer.read().decode()
    api = f"/v1/jobs/{job['id']}/events"
    with client.stream("GET", api, headers=tokens.headers("viewer")) as answer:
        theirs = answer.read().decode()
    assert mine == theirs
    frames = parse_sse(mine)
    assert frames[-1][1] == "end" and frames[-2][1:] == ("job", {"state": "succeeded"})
    assert sorted(d["host"] for _, kind, d in frames if kind == "snapshot") == sorted(names)
    # `after` (the page's newest event) and Last-Event-ID (a reconnect) skip what was seen.
    third = frames[2][0]
    with viewer.stream("GET", f"/jobs/{job['id']}/events?after={third}") as answer:
        rest = parse_sse(answer.read().decode())
    assert [f[0] for f in rest] == [f[0] for f in frames[3:]]
    headers = {"Last-Event-ID": str(frames[4][0])}
    with viewer.stream("GET", f"/jobs/{job['id']}/events?after={third}", headers=headers) as got:
        assert [f[0] for f in parse_sse(got.read().decode())] == [f[0] for f in frames[5:]]
    # The page says where its stream starts: after the newest event it shows.
    page = parse(viewer.get(f"/jobs/{job['id']}").text)
    assert page.one("article", id="job").attrs["data-after"] == str(frames[-2][0])
    with TestClient(app) as stranger:
        gone = stranger.get(f"/jobs/{job['id']}/events", follow_redirects=False)
    assert gone.status_code == 303 and gone.headers["location"].startswith("/signin")


def test_operator_cancels_viewer_cannot(
    client: TestClient,
    tokens: Tokens,
    feeder: Feeder,
    browser: Browser,
    dispatcher: RecordingDispatcher,
) -> None:
    names = _hosts(client, tokens, 2)
    job = submit(client, tokens.headers("operator"), targets={"hosts": names}, duration_s=60)
    runs = _runs(job)
    viewer, viewer_csrf = browser("viewer")
    seen = parse(viewer.get(f"/jobs/{job['id']}").text)
    assert not seen.all("form", id="cancel") and not seen.all("a", id="run-again")
    refused = viewer.post(
        f"/jobs/{job['id']}/cancel", data={"csrf": viewer_csrf}, follow_redirects=False
    )
    assert refused.status_code == 403 and "operator" in refused.text
    assert (
        client.get(f"/v1/jobs/{job['id']}", headers=tokens.headers("viewer")).json()["state"]
        == "pending"
    )

    operator, _ = browser("operator")
    mine = parse(operator.get(f"/jobs/{job['id']}").text)
    assert mine.one("a", id="run-again").attrs["href"] == f"/jobs/new?from={job['id']}"
    form = mine.one("form", id="cancel")
    assert form.attrs["action"] == f"/jobs/{job['id']}/cancel"
    csrf = form.one("input", name="csrf").attrs["value"]
    done = operator.post(form.attrs["action"], data={"csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/jobs/{job['id']}"
    after = client.get(f"/v1/jobs/{job['id']}", headers=tokens.headers("viewer")).json()
    assert after["state"] == "cancelled"
    assert {r["state"] for r in after["runs"]} == {"cancelled"}
    assert set(runs.values()) <= set(dispatcher.cancels)
    page = parse(operator.get(done.headers["location"]).text)
    assert page.one("span", id="job-state").text() == "cancelled"
    assert not page.all("form", id="cancel")  # final: nothing left to cancel
    again = operator.post(form.attrs["action"], data={"csrf": csrf}, follow_redirects=False)
    assert again.status_code == 303  # cancelling a finished job changes nothing


DOWNLOADS = {
    "html": "text/html",
    "csv": "text/csv",
    "openmetrics": "application/openmetrics-text",
    "folded": "text/plain",
    "speedscope": "application/json",
}


def test_the_report_inline_and_its_downloads_are_the_apis(
    client: TestClient, tokens: Tokens, feeder: Feeder, browser: Browser
) -> None:
    job_id, names = _fleet_job(client, tokens, feeder, hot=5000)
    viewer, _ = browser("viewer")
    page = viewer.get(f"/jobs/{job_id}")
    tree = parse(page.text)
    assert tree.one("article", id="job").attrs["data-final"] == "true"
    report = tree.one("section", id="report")
    sentences = [li.text() for li in report.one("ul", id="outliers").all("li")]
    assert f"{names[4]}: p50 runqlat 16.1x the fleet median (4.1 ms vs 255 us)" in sentences
    # Outliers come first, then the heatmap and the overlay, then the top keys.
    parts = [s.attrs["class"] for s in report.all("section") if "part" in s.attrs.get("class", "")]
    assert parts[0] == "part outliers" and "part histogram" in parts and "part table" in parts
    labels = [svg.attrs["aria-label"] for svg in report.all("svg")]
    assert "heatmap of runqlat" in labels and "runqlat: hosts over the fleet" in labels
    assert "opens: fleet top keys" in labels
    assert f"{names[5]}: failed (compile error: no such map)" in report.text()
    # The fragment the page fetches when a job ends is the same section.
    fragment = viewer.get(f"/jobs/{job_id}/report")
    assert fragment.status_code == 200 and fragment.text.lstrip().startswith(
        '<section id="report">'
    )
    assert parse(fragment.text).one("ul", id="outliers").all("li")[0].text() == sentences[0]

    links = {a.attrs["data-kind"]: a.attrs["href"] for a in report.all("a", class_="download")}
    assert set(links) == set(DOWNLOADS)
    for kind, media in DOWNLOADS.items():
        got = viewer.get(links[kind])
        assert got.status_code == 200, (kind, got.text[:300])
        assert got.headers["content-type"].startswith(media), kind
        assert got.headers["content-disposition"].startswith("attachment; filename=")
        api = client.get(
            f"/v1/jobs/{job_id}/report?format={kind}", headers=tokens.headers("viewer")
        )
        assert got.content == api.content, kind
    html = viewer.get(links["html"])
    assert "script-src 'self'" in html.headers["content-security-policy"]
    assert "<script" not in html.text  # render_html writes no script: the console's CSP holds


def test_flame_graphs_and_the_differential_with_hostile_symbols_and_keys(
    client: TestClient, tokens: Tokens, feeder: Feeder, browser: Browser
) -> None:
    names = _hosts(client, tokens, 3, prefix="fl")
    job = submit(
        client, tokens.headers("operator"), targets={"hosts": names}, program="cpu_profile"
    )
    runs = _runs(job)
    for i, name in enumerate(names):
        cpu = {"main;work": 100, f"main;{HOSTILE}": 10 + (300 if i == 2 else 0)}
        results = [stacks(cpu), counters("opens", {f"<img src=x onerror=alert({i})>": 5})]
        feeder(
            name,
            state(runs[name], "running"),
            snapshot(runs[name], 0, results, final=True),
            state(runs[name], "succeeded"),
            job_id=job["id"],
        )
    viewer, _ = browser("viewer")
    page = viewer.get(f"/jobs/{job['id']}?host={names[1]}")
    assert page.status_code == 200
    assert HOSTILE not in page.text and "<img" not in page.text
    tree = parse(page.text)
    flame = tree.one("section", id="flame")
    labels = [svg.attrs["aria-label"] for svg in flame.all("svg")]
    assert "fleet flame graph" in labels and f"differential flame graph {names[1]}" in labels
    assert {o.attrs["value"] for o in flame.one("select", id="diff-host").all("option")} == set(
        names
    )
    assert flame.one("option", selected="").attrs["value"] == names[1]
    assert HOSTILE in flame.text()  # the symbol is shown, as text
    assert f"Differential: {names[1]} vs the fleet (chosen)" in flame.text()
    # Without a choice, the differential is the top-ranked host's (outliers first, then names).
    default = parse(viewer.get(f"/jobs/{job['id']}").text).one("section", id="flame")
    assert f"Differential: {min(names)} vs the fleet (the top-ranked host)" in default.text()
    report = tree.one("section", id="report")
    folded = next(a for a in report.all("a", class_="download") if a.attrs["data-kind"] == "folded")
    assert folded.attrs["href"].endswith(f"?host={names[1]}")
    host_folded = viewer.get(folded.attrs["href"]).text
    api = client.get(
        f"/v1/jobs/{job['id']}/report?format=folded&host={names[1]}",
        headers=tokens.headers("viewer"),
    )
    assert host_folded == api.text and "main;work 100\n" in host_folded
    scope = viewer.get(f"/jobs/{job['id']}/download/speedscope").json()
    assert [p["name"] for p in scope["profiles"]] == sorted(names)
    bad = viewer.get(f"/jobs/{job['id']}?host=%3Cb%3E")
    assert bad.status_code == 422 and "<b>" not in bad.text


def _syscalls_job(
    client: TestClient, tokens: Tokens, feeder: Feeder, names: list[str], reads: int
) -> str:
    job = submit(client, tokens.headers("operator"), targets={"hosts": names})
    for name, run in _runs(job).items():
        feeder(
            name,
            state(run, "running"),
            snapshot(run, 0, [counters("syscalls", {"read": reads})], final=True),
            state(run, "succeeded"),
            job_id=job["id"],
        )
    return str(job["id"])


def test_compare_two_jobs_host_by_host(
    client: TestClient, tokens: Tokens, feeder: Feeder, browser: Browser
) -> None:
    names = _hosts(client, tokens, 2, prefix="cmp")
    before = _syscalls_job(client, tokens, feeder, names, reads=100)
    after = _syscalls_job(client, tokens, feeder, names[:1], reads=300)
    viewer, _ = browser("viewer")
    empty = parse(viewer.get("/jobs/compare").text)
    assert empty.one("form", id="compare") is not None and not empty.all("table", id="comparison")
    got = viewer.get(f"/jobs/compare?a={before}&b={after}")
    assert got.status_code == 200
    api = client.get(
        f"/v1/reports/compare?base={before}&other={after}", headers=tokens.headers("viewer")
    ).json()
    table = parse(got.text).one("table", id="comparison")
    for host in api["hosts"]:
        rows = table.all("tr", **{"data-host": host["host"]})
        assert [r.attrs["data-metric"] for r in rows] == [m["id"] for m in host["metrics"]]
    both = {r.attrs["data-metric"]: r for r in table.all("tr", **{"data-host": names[0]})}
    cells = [td.text() for td in both["table:syscalls:count"].all("td")]
    assert cells[-1] == "3.00x" and cells[-2].startswith("+")
    gone = table.all("tr", **{"data-host": names[1]})
    assert "(before only)" in gone[0].text() and all(r.all("td")[-1].text() == "—" for r in gone)
    missing = viewer.get(f"/jobs/compare?a={before}&b={uuid.uuid4()}")
    assert missing.status_code == 404 and "no job" in missing.text


@pytest.mark.parametrize("query", ["a=x&b=" + "y" * 65, "a=" + "z" * 65 + "&b=y"])
def test_compare_bounds_its_ids(browser: Browser, query: str) -> None:
    viewer, _ = browser("viewer")
    got = viewer.get(f"/jobs/compare?{query}")
    assert got.status_code == 422 and got.headers["content-type"].startswith("text/html")


def test_a_sessions_streams_count_against_its_tokens_cap(
    app: FastAPI,
    client: TestClient,
    tokens: Tokens,
    browser: Browser,
    sessions: sessionmaker[Session],
) -> None:
    """The console's streams and the API's share one cap per token: a browser cannot open more."""
    job = submit(client, tokens.headers("operator"), targets={"hosts": _hosts(client, tokens, 1)})
    viewer, _ = browser("viewer")
    with sessions() as session:
        token = auth_service.authenticate(session=session, raw=tokens.token("viewer"))
        assert token is not None
        token_id = token.id
    slots: StreamSlots = app.state.stream_slots
    taken = 0
    try:
        while slots.acquire(token_id):  # as if the API held them all
            taken += 1
        refused = viewer.get(f"/jobs/{job['id']}/events")
        assert refused.status_code == 429 and "event streams open" in refused.text
        assert refused.headers["content-type"].startswith("text/html")
    finally:
        for _ in range(taken):
            slots.release(token_id)
    assert slots.open(token_id) == 0
