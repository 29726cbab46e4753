"""Names a traced host controls, through every output: no control character, no markup, no
formula, and every format still parses as itself.

Each hostile string is a comm, a path, a label key and value, a stack frame, a table name and
an error message of one real job (real app, SQLite, Redis, ingest), read back through the API
and the CLI's renderers.
"""

from __future__ import annotations

import csv
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient
from markdown_it import MarkdownIt
from sqlalchemy.orm import Session, sessionmaker

from controller.cli.sidebyside import render_results
from controller.cli.text import emit
from controller.ingest.consumer import Ingest
from controller.jobs.models import JobPublic, JobResults
from controller.reports.render_csv import COLUMNS, FORMULA_START
from controller.settings import Settings
from node_agent.protocol import (
    CounterTable,
    ErrorCode,
    EventSamples,
    FoldedStacks,
    KeyField,
    Log2Histogram,
    RunState,
    StackCount,
    StateChange,
    StreamEnvelope,
    TraceError,
)
from tests.controller.conftest import Tokens
from tests.controller.support import register_host, snapshot, submit

HOSTS = ("hostile-a", "hostile-b")
SPEEDSCOPE_SCHEMA = json.loads(
    (Path(__file__).parent / "data" / "speedscope-file-format-schema.json").read_text()
)
# What a terminal, a spreadsheet or a log viewer acts on: C0, DEL, C1, surrogates, bidi.
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")

HOSTILE: dict[str, str] = {
    "terminal title and clear": "\x1b]0;PWNED\x07\x1b[2J",
    "newline in a path": "/tmp/a\nb",
    "carriage return": "ok\rEVIL",
    "C1 CSI and DEL": "x\x9b31m\x7fy",
    "NUL": "a\x00b",
    "bidi override": "\u202egnp.exe",
    "raw HTML": "<img src=x onerror=alert(1)>",
    "markdown link": "[x](javascript:alert(1))",
    "autolink": "<javascript:alert(1)>",
    "entity": "&lt;script&gt;&#106;avascript:",
    "backticks and emphasis": "`x` *y* _z_",
    "pipes": "a|b|c",
    "heading": "# Heading",
    "list and rule start": "1. - ***",
    "formula": '=HYPERLINK("http://evil","x")',
    "plus formula": "+1+cmd|' /C calc'!A0",
    "minus formula": "-2+3",
    "at formula": "@SUM(A1)",
    "tab first": "\t=1",
    "folded separators": "a;b c 5",
    "openmetrics breakout": 'x"} 1\n# EOF',
    "backslash": "C:\\evil\\",
}
BENIGN = "plain-name"


def results_for(name: str) -> list[Any]:
    """One result of every kind, the hostile name in every field a host controls."""
    return [
        CounterTable(
            name=f"opens {name}",
            key_fields=[KeyField(name="comm"), KeyField(name="path", type="path")],
            rows=[([name, name], [5]), (["cat", f"/etc/{name}"], [3])],
            total_rows=2,
        ),
        Log2Histogram(
            name=f"lat {name}",
            unit="usecs",
            labels={name: name, "le": name, "host": name},
            buckets=[(3, 10), (5, 2)],
        ),
        FoldedStacks(
            name="stacks",
            stacks=[
                StackCount(frames=["main", name, f"{name};leaf"], count=7),
                StackCount(frames=["main", "ok"], count=3),
            ],
            total_rows=2,
        ),
        EventSamples(name="execs", fields=["comm", "path"], events=[[name, name]], seen=1),
    ]


def run_job(
    name: str, client: TestClient, tokens: Tokens, settings: Settings, sessions: Any
) -> str:
    job = submit(
        client, tokens.headers("operator"), program="opens", duration_s=1, targets={"hosts": HOSTS}
    )
    ingest = Ingest(settings, sessions, None)  # type: ignore[arg-type]
    by_host = {r["host"]: r["id"] for r in job["runs"]}
    events: list[StreamEnvelope] = []
    for host, run_id in by_host.items():
        end = StateChange(run_id=run_id, state=RunState.succeeded)
        if host == HOSTS[1]:
            error = TraceError(code=ErrorCode.internal, message=name, detail=name)
            end = StateChange(run_id=run_id, state=RunState.failed, error=error, reason=name)
        for event in (
            StateChange(run_id=run_id, state=RunState.running),
            snapshot(run_id, 0, results_for(name), final=True),
            end,
        ):
            events.append(StreamEnvelope(host=host, job_id=job["id"], event=event))
    with sessions() as session:
        ingest.apply(session, events)
        session.commit()
    return str(job["id"])


@pytest.fixture(scope="module")
def hosts(client: TestClient, tokens: Tokens) -> None:
    for host in HOSTS:
        register_host(client, tokens.headers("admin"), host)


def fetch(client: TestClient, tokens: Tokens, path: str, **params: Any) -> str:
    answer = client.get(path, params=params, headers=tokens.headers("viewer"))
    assert answer.status_code == 200, answer.text
    return answer.text


def terminal(client: TestClient, tokens: Tokens, job_id: str) -> list[str]:
    results = JobResults.model_validate_json(fetch(client, tokens, f"/v1/jobs/{job_id}/results"))
    job = JobPublic.model_validate_json(fetch(client, tokens, f"/v1/jobs/{job_id}"))
    out = io.StringIO()
    # Wide enough that hosts always sit side by side: the line count is then the shape.
    emit(render_results(results, runs=job.runs, width=100_000), out)
    return out.getvalue().splitlines()


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attrs: set[str] = set()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs |= {k for k, _ in attrs}
        self.hrefs += [v or "" for k, v in attrs if k in ("href", "src")]


def tags_of(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    return parser


MD = MarkdownIt("commonmark").enable("table")


def markdown_html(text: str) -> str:
    return MD.render(text)


def assert_table_shapes(text: str) -> None:
    """Every Markdown table row has as many cells as its header: no pipe split a cell."""
    tokens = MD.parse(text)
    width: int | None = None
    cells = 0
    for token in tokens:
        if token.type == "thead_open":
            width = None
        if token.type == "tr_open":
            cells = 0
        if token.type in ("th_open", "td_open"):
            cells += 1
        if token.type == "tr_close":
            if width is None:
                width = cells
            assert cells == width


@pytest.fixture(scope="module")
def benign(
    client: TestClient,
    tokens: Tokens,
    settings: Settings,
    sessions: sessionmaker[Session],
    hosts: None,
) -> dict[str, Any]:
    job_id = run_job(BENIGN, client, tokens, settings, sessions)
    page = fetch(client, tokens, f"/v1/jobs/{job_id}/report", format="html")
    return {
        "terminal": terminal(client, tokens, job_id),
        "html_tags": tags_of(page).tags,
        "md_tags": tags_of(
            markdown_html(fetch(client, tokens, f"/v1/jobs/{job_id}/report", format="md"))
        ).tags,
    }


@pytest.mark.parametrize("name", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_names_leave_every_output_inert(
    client: TestClient,
    tokens: Tokens,
    settings: Settings,
    sessions: sessionmaker[Session],
    hosts: None,
    benign: dict[str, Any],
    name: str,
) -> None:
    job_id = run_job(name, client, tokens, settings, sessions)
    report = f"/v1/jobs/{job_id}/report"

    lines = terminal(client, tokens, job_id)
    assert not [line for line in lines if CONTROL.search(line)]
    # A newline in a name must not add a row: the view has the benign job's shape.
    assert len(lines) == len(benign["terminal"]), "\n".join(lines)

    md = fetch(client, tokens, report, format="md")
    assert not CONTROL.search(md.replace("\n", ""))
    rendered = markdown_html(md)
    found = tags_of(rendered)
    assert found.tags <= benign["md_tags"], rendered
    assert not found.hrefs, rendered
    assert "javascript:" not in rendered.lower() or "href" not in rendered.lower()
    assert_table_shapes(md)

    text = fetch(client, tokens, report, format="csv")
    assert not CONTROL.search(text.replace("\n", ""))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(COLUMNS) and all(len(r) == len(COLUMNS) for r in rows)
    for row in rows[1:]:
        for cell in row:
            assert not cell.startswith(FORMULA_START) or _number(cell), (cell, row)
    again = io.StringIO()
    csv.writer(again, lineterminator="\n").writerows(rows)
    assert again.getvalue() == text  # the csv module reads back exactly what was written

    folded = fetch(client, tokens, report, format="folded")
    assert not CONTROL.search(folded.replace("\n", ""))
    parsed = [re.fullmatch(r"(.*) (\d+)", line) for line in folded.splitlines()]
    assert all(parsed), folded
    stacks = {m[1]: int(m[2]) for m in parsed if m}
    assert sorted(len(s.split(";")) for s in stacks) == [2, 3]
    assert sum(stacks.values()) == 20  # both hosts: 7 + 3 each, nothing split or merged

    body = fetch(client, tokens, report, format="speedscope")
    assert not CONTROL.search(body)
    document = json.loads(body)
    jsonschema.validate(document, SPEEDSCOPE_SCHEMA)
    assert not [f for f in document["shared"]["frames"] if CONTROL.search(f["name"])]

    metrics = fetch(client, tokens, report, format="openmetrics")
    assert_openmetrics(metrics)

    page = fetch(client, tokens, report, format="html")
    assert not CONTROL.search(page.replace("\n", ""))
    found = tags_of(page)
    assert found.tags <= benign["html_tags"]
    assert not [a for a in found.attrs if a.startswith("on")]
    assert not [h for h in found.hrefs if "javascript" in h.lower()]

    as_json = fetch(client, tokens, report, format="json")
    assert not CONTROL.search(as_json)  # JSON's own escapes: \u001b, never the byte


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


SAMPLE = re.compile(
    r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>.*)\} (?P<value>[0-9.e+-]+|\+Inf)"
)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')


def assert_openmetrics(text: str) -> None:
    """Per the OpenMetrics text grammar: valid names, escaped values, unique label names."""
    assert text.splitlines().count("# EOF") == 1 and text.endswith("\n# EOF\n"), text
    assert not CONTROL.search(text.replace("\n", ""))
    for line in text.splitlines()[:-1]:
        if line.startswith("# "):
            kind, metric = line.split(" ")[1:3]
            assert kind in ("TYPE", "HELP") and re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", metric)
            continue
        sample = SAMPLE.fullmatch(line)
        assert sample, line
        labels, names, at = sample["labels"], [], 0
        while at < len(labels):
            label = LABEL.match(labels, at)
            assert label, (line, labels[at:])
            names.append(label[1])
            at = label.end()
        assert len(names) == len(set(names)), line
        assert not [n for n in names if n.startswith("__")], line


def test_csv_formula_cells_are_quoted_and_numbers_stay_numbers() -> None:
    from controller.reports.render_csv import csv_cell

    assert csv_cell("=1+2") == "'=1+2"
    assert csv_cell("\t=1") == "'\\t=1"
    assert csv_cell("-2+3") == "'-2+3"
    assert csv_cell(-0.5) == -0.5 and csv_cell(None) is None
    assert csv_cell("web-1") == "web-1"
