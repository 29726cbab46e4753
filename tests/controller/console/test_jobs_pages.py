"""The jobs list and the submit form, through a signed-in browser against the real app: the
database, the real Celery dispatcher on Redis, and the API's own answers to compare with."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.app import create_app
from controller.db import utcnow
from controller.dispatch import CeleryDispatcher
from controller.jobs.models import Job, Run, Targets
from controller.keys.store import KeyStore
from controller.settings import Settings
from tests.controller.conftest import RecordingDispatcher, Tokens
from tests.controller.console.conftest import sign_in
from tests.controller.support import register_host

Browser = Callable[[str], tuple[TestClient, str]]
PAGED = 130  # jobs on the paging host: three pages of 50
BUDGET = 7000  # rows: two hosts' three snapshots fit (2 x 3 x 1000), eight hosts' final do not


@pytest.fixture(scope="module")
def settings_overrides() -> dict[str, Any]:
    return {"job_budget_rows": BUDGET}


@pytest.fixture(scope="module")
def fleet(client: TestClient, tokens: Tokens) -> list[str]:
    admin = tokens.headers("admin")
    register_host(client, admin, "web-1", role="web")
    register_host(client, admin, "web-2", role="web")
    register_host(client, admin, "db-1", role="db")
    register_host(client, admin, "page-host", role="paging")
    spare = [f"spare-{i}" for i in range(4)]
    for name in spare:
        register_host(client, admin, name)
    return ["web-1", "web-2", "db-1", "page-host", *spare]


@pytest.fixture(scope="module")
def paged(fleet: list[str], sessions: sessionmaker[Session]) -> list[str]:
    """PAGED finished jobs on page-host, one a minute apart: newest first is the reverse."""
    start = utcnow() - timedelta(days=2)
    made: list[str] = []
    with sessions() as session:
        for i in range(PAGED):
            state = "succeeded" if i % 2 else "failed"
            job = Job(
                id=str(uuid.uuid4()),
                program="runqlat" if i % 5 == 0 else "syscalls",
                params={},
                targets=Targets(hosts=["page-host"]),
                duration_s=30.0,
                interval_s=5.0 if i % 3 == 0 else None,
                state=state,
                created_by="seeder",
                created_at=start + timedelta(minutes=i),
            )
            job.runs.append(Run(id=str(uuid.uuid4()), host_name="page-host", state=state))
            session.add(job)
            made.append(job.id)
        session.commit()
    return made[::-1]


def rows(page: str) -> list[str]:
    return re.findall(r'<tr data-job="([^"]+)">', page)


def field_error(page: str, field: str) -> str | None:
    found = re.search(
        rf'<p class="field-error" data-field="{re.escape(html.escape(field))}">(.*?)</p>', page
    )
    return html.unescape(found.group(1)) if found else None


def link(page: str, rel: str) -> str | None:
    found = re.search(rf'<a href="([^"]+)" rel="{rel}"', page)
    return html.unescape(found.group(1)) if found else None


# -- the list -------------------------------------------------------------------------------------


def test_pages_through_every_job_once(browser: Browser, paged: list[str]) -> None:
    client, _ = browser("viewer")
    seen: list[str] = []
    url: str | None = "/jobs?host=page-host"
    pages = 0
    while url is not None:
        got = client.get(url)
        assert got.status_code == 200
        assert f"{PAGED} jobs" in got.text
        page_rows = rows(got.text)
        assert len(page_rows) == (50 if pages < 2 else PAGED - 100)
        assert (link(got.text, "prev") is None) == (pages == 0)
        seen += page_rows
        url = link(got.text, "next")
        if url:
            assert "host=page-host" in url and f"offset={50 * (pages + 1)}" in url
        pages += 1
    assert pages == 3 and seen == paged  # newest first, each once
    back = client.get("/jobs?host=page-host&limit=50&offset=100")
    assert link(back.text, "prev") == "/jobs?host=page-host&limit=50&offset=50"
    assert "101\u2013130 of 130" in back.text


def test_filters_are_in_the_url(browser: Browser, paged: list[str], sessions: Any) -> None:
    client, _ = browser("viewer")
    got = client.get("/jobs", params={"state": "failed", "host": "page-host", "limit": 20})
    assert got.status_code == 200 and "65 jobs" in got.text
    with sessions() as session:
        failed = {j.id for j in session.scalars(select(Job).where(Job.state == "failed"))}
    assert set(rows(got.text)) <= failed and len(rows(got.text)) == 20
    assert link(got.text, "next") == "/jobs?state=failed&host=page-host&limit=20&offset=20"
    assert '<option value="failed" selected>' in got.text
    runq = client.get("/jobs?program=runqlat&host=page-host&state=")  # the form's "any" state
    assert runq.status_code == 200 and f"{PAGED // 5} jobs" in runq.text
    nothing = client.get("/jobs?host=nowhere")
    assert "No job matches these filters." in nothing.text and rows(nothing.text) == []
    bad = client.get("/jobs?state=sideways")
    assert bad.status_code == 422 and "&#39;sideways&#39; is not one of" in bad.text


def test_a_row_says_what_the_job_is(browser: Browser, paged: list[str]) -> None:
    client, _ = browser("viewer")
    got = client.get("/jobs?host=page-host&limit=1")
    newest = paged[0]  # index 129: succeeded, syscalls, final only
    row = got.text.split(f'<tr data-job="{newest}">')[1].split("</tr>")[0]
    assert f'href="/jobs/{newest}"' in row and f">{newest[:8]}</a>" in row
    assert "syscalls" in row and "page-host" in row and "seeder" in row
    assert '<span class="state succeeded">succeeded</span>' in row
    assert 'data-state="succeeded">1 succeeded' in row
    assert re.search(r'title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">\d+ d ago', row)
    assert "30 s" in row


def test_viewer_sees_no_new_job_and_cannot_post(
    browser: Browser, fleet: list[str], sessions: sessionmaker[Session]
) -> None:
    client, csrf = browser("viewer")
    listing = client.get("/jobs")
    assert 'id="new-job"' not in listing.text and "New job" not in listing.text
    form = client.get("/jobs/new")
    assert form.status_code == 403 and "submit-job" not in form.text
    with sessions() as session:
        before = len(session.scalars(select(Job.id)).all())
    valid = {"csrf": csrf, "program": "syscalls", "targets": "all", "duration": "1s"}
    got = client.post("/jobs/new", data=valid, follow_redirects=False)
    assert got.status_code == 403
    with sessions() as session:
        assert len(session.scalars(select(Job.id)).all()) == before
    operator, _ = browser("operator")
    assert 'id="new-job" href="/jobs/new"' in operator.get("/jobs").text


# -- the form ------------------------------------------------------------------------------------


def test_the_form_comes_from_the_catalog(browser: Browser, fleet: list[str]) -> None:
    client, _ = browser("operator")
    got = client.get("/jobs/new?program=cpu_profile&targets=selector&targets.selector=role%3Dweb")
    assert got.status_code == 200
    page = got.text
    assert re.search(
        r'<input id="param-frequency" name="params.frequency" type="number" step="1" min="1"'
        r' max="1000" value="49"',
        page,
    )
    assert '<select id="param-kernel" name="params.kernel">' in page
    assert '<option value="cpu_profile" selected>' in page
    assert 'id="targets-mode-selector" value="selector" checked' in page
    assert 'value="role=web"' in page
    assert '<option value="custom"' not in page  # an operator may not run custom programs
    assert 'id="submit-job"' in page and 'src="/static/forms.js"' in page
    assert "<script>" not in page  # CSP: script-src 'self', no inline script
    assert "web-1" in page and "role=db|paging|web" in page  # the hints: known hosts and labels
    admin, _ = browser("admin")
    assert '<option value="custom"' in admin.get("/jobs/new").text
    assert client.get("/static/forms.js").status_code == 200


def test_submit_creates_the_job_and_dispatches_it(
    browser: Browser,
    fleet: list[str],
    sessions: sessionmaker[Session],
    dispatcher: RecordingDispatcher,
) -> None:
    client, csrf = browser("operator")
    form = {
        "csrf": csrf,
        "program": "syscalls",
        "params.per_process": "false",
        "scope.comm": "nginx",
        "targets": "selector",
        "targets.selector": "role=web",
        "duration": "2s",
        "interval": "1s",
    }
    got = client.post("/jobs/new", data=form, follow_redirects=False)
    assert got.status_code == 303, got.text[:500]
    job_id = got.headers["location"].removeprefix("/jobs/")
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.program, job.params, job.duration_s, job.interval_s) == (
            "syscalls",
            {"per_process": False},
            2.0,
            1.0,
        )
        assert job.scope.comm == "nginx" and job.created_by == "test-operator"
        assert sorted(r.host_name for r in job.runs) == ["web-1", "web-2"]
    sent = {(host, r.job_id) for host, r in dispatcher.sent}
    assert {("web-1", job_id), ("web-2", job_id)} <= sent  # on Redis, through Celery
    assert f'<tr data-job="{job_id}">' in client.get("/jobs?program=syscalls").text


def api_error(client: TestClient, headers: dict[str, str], body: dict[str, Any]) -> tuple[str, str]:
    """(field, message) of the API's answer to the same job."""
    answer = client.post("/v1/jobs", json=body, headers=headers)
    assert answer.status_code in (403, 422), answer.text
    detail = answer.json()["detail"][0]
    return ".".join(str(p) for p in detail["loc"][1:3]), detail["msg"]


GOOD_FORM = {"program": "syscalls", "targets": "names", "targets.names": "web-1", "duration": "2s"}
GOOD_BODY: dict[str, Any] = {
    "program": "syscalls",
    "targets": {"hosts": ["web-1"]},
    "duration_s": 2,
}

# (case, form changes, the same job for the API (None: the API takes no text there), field,
#  the form's own message when the API has none, the input whose value must be kept)
ERRORS: list[tuple[str, dict[str, str], dict[str, Any] | None, str, str, str]] = [
    ("bad param type", {"params.per_process": "maybe"}, {"params": {"per_process": "maybe"}},
     "params.per_process", "", "maybe"),
    ("param above max", {"program": "cpu_profile", "params.frequency": "5000"},
     {"program": "cpu_profile", "params": {"frequency": 5000}}, "params.frequency", "", "5000"),
    ("param below min", {"program": "cpu_profile", "params.stack_entries": "3"},
     {"program": "cpu_profile", "params": {"stack_entries": 3}}, "params.stack_entries", "", "3"),
    ("not a choice", {"program": "runqlat", "params.per": "host"},
     {"program": "runqlat", "params": {"per": "host"}}, "params.per", "", "runqlat"),
    ("bad duration", {"duration": "10 parsecs"}, None, "duration_s",
     "bad duration '10 parsecs' (use e.g. 10s, 500ms, 2m, 1h)", "10 parsecs"),
    ("duration above the limit", {"duration": "2h"}, {"duration_s": 7200}, "duration_s", "", "2h"),
    ("zero duration", {"duration": "0"}, {"duration_s": 0}, "duration_s", "", "0"),
    ("interval longer than duration", {"interval": "5s"}, {"interval_s": 5}, "interval_s", "",
     "5s"),
    ("bad selector", {"targets": "selector", "targets.selector": "role"}, None,
     "targets.selector", "bad 'role', want k=v with a label key and value", "role"),
    ("bad selector key", {"targets": "selector", "targets.selector": "-x=1"},
     {"targets": {"selector": {"-x": "1"}}}, "targets.selector", "", "-x=1"),
    ("selector matching nothing", {"targets": "selector", "targets.selector": "role=nobody"},
     {"targets": {"selector": {"role": "nobody"}}}, "targets.selector", "", "role=nobody"),
    ("unknown host", {"targets.names": "web-1, ghost-9"},
     {"targets": {"hosts": ["web-1", "ghost-9"]}}, "targets.hosts", "", "web-1, ghost-9"),
    ("no targets", {"targets.names": ""}, {"targets": {"hosts": []}}, "targets.hosts", "", "2s"),
    ("scope the program refuses", {"program": "tcp_retransmits", "scope.pid": "7"},
     {"program": "tcp_retransmits", "scope": {"pid": 7}}, "scope.pid", "", "7"),
    ("bad pid", {"scope.pid": "-3"}, {"scope": {"pid": -3}}, "scope.pid", "", "-3"),
    ("custom for an operator", {"program": "custom", "source": "int x;", "maps": "m:counter"},
     {"program": "custom", "source": "int x;", "maps": [{"name": "m", "kind": "counter"}]},
     "program", "", "2s"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "changes", "body", "field", "own", "kept"), ERRORS, ids=[e[0] for e in ERRORS]
)
def test_each_error_is_the_apis_beside_its_field(
    browser: Browser,
    client: TestClient,
    tokens: Tokens,
    fleet: list[str],
    case: str,
    changes: dict[str, str],
    body: dict[str, Any] | None,
    field: str,
    own: str,
    kept: str,
) -> None:
    expected = own
    if body is not None:
        api_field, expected = api_error(client, tokens.headers("operator"), GOOD_BODY | body)
        assert api_field == field
    browser_client, csrf = browser("operator")
    got = browser_client.post(
        "/jobs/new", data={"csrf": csrf, **GOOD_FORM, **changes}, follow_redirects=False
    )
    assert got.status_code == (403 if field == "program" else 422), got.text[:300]
    assert field_error(got.text, field) == expected
    assert f'value="{html.escape(kept)}"' in got.text  # what the visitor typed is kept
    assert 'id="submit-job"' in got.text and csrf in got.text


def test_an_error_of_no_field_of_the_form_is_on_top(
    browser: Browser, fleet: list[str], sessions: sessionmaker[Session]
) -> None:
    client, csrf = browser("operator")
    form = {"csrf": csrf, **GOOD_FORM, "targets": "all", "targets.names": "kept-text"}
    got = client.post("/jobs/new", data=form, follow_redirects=False)
    assert got.status_code == 422
    top = re.search(r'<div class="error" id="form-errors" role="alert">\s*<p>(.*?)</p>', got.text)
    assert top and "above the budget of 7,000" in html.unescape(top.group(1))
    assert 'id="targets-mode-all" value="all" checked' in got.text
    assert 'value="kept-text"' in got.text


HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


def test_hostile_values_are_escaped_never_a_500(browser: Browser, fleet: list[str]) -> None:
    client, csrf = browser("operator")
    shown = [
        client.get("/jobs", params={"program": HOSTILE, "host": HOSTILE}),
        client.get("/jobs/new", params={"program": HOSTILE, "targets.names": HOSTILE}),
        client.post(
            "/jobs/new",
            data={
                "csrf": csrf,
                "program": HOSTILE,
                "params." + HOSTILE: HOSTILE,
                "targets": HOSTILE,
                "targets.names": HOSTILE,
                "duration": HOSTILE,
                "interval": "9" * 5000,
            },
        ),
        client.post(
            "/jobs/new",
            data={"csrf": csrf, **GOOD_FORM, "params." + HOSTILE: HOSTILE, "params.": "x"},
        ),
        client.post(
            "/jobs/new",
            data={"csrf": csrf, **GOOD_FORM, "scope.comm": HOSTILE, "scope.cgroup": "../" * 50},
        ),
    ]
    for got in shown:
        assert got.status_code in (200, 422), got.text[:300]
        assert "<script>alert(1)" not in got.text and "<img src=x" not in got.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown[2].text
    assert field_error(shown[3].text, "params." + HOSTILE) is None  # not a field of the form
    assert "unknown parameter" in html.unescape(shown[3].text)
    raw = client.post(
        "/jobs/new",
        content=f"csrf={csrf}&program=%ff%fe&targets=all&duration=1s".encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert raw.status_code < 500


def test_a_job_runs_again_from_its_own_form(browser: Browser, paged: list[str]) -> None:
    client, _ = browser("operator")
    again = client.get(f"/jobs/new?from={paged[-1]}")  # the oldest: runqlat, every 5 s
    assert again.status_code == 200
    assert '<option value="runqlat" selected>' in again.text
    assert 'name="targets.names" type="text" value="page-host"' in again.text
    assert 'id="duration" name="duration" type="text" value="30s"' in again.text
    assert 'id="interval" name="interval" type="text" value="5s"' in again.text
    missing = client.get("/jobs/new", params={"from": "<b>nope</b>"})
    assert missing.status_code == 404 and "no job &lt;b&gt;nope&lt;/b&gt;" in missing.text


def test_with_redis_away_the_job_says_its_runs_were_not_queued(
    settings: Settings, engine: Any, tokens: Tokens, fleet: list[str], sessions: Any
) -> None:
    """As the API: the job is made, and each run fails saying the broker was away."""
    away = settings.model_copy(update={"redis_url": "redis://127.0.0.1:9/0"})
    app = create_app(away, CeleryDispatcher(away.redis_url, KeyStore(away.keys_dir)))
    with TestClient(app) as client:
        csrf = sign_in(client, tokens.token("operator"))
        got = client.post("/jobs/new", data={"csrf": csrf, **GOOD_FORM}, follow_redirects=False)
    app.state.engine.dispose()
    assert got.status_code == 303, got.text[:300]
    with sessions() as session:
        job = session.get(Job, got.headers["location"].removeprefix("/jobs/"))
        assert job is not None and job.state == "failed"
        assert all((r.reason or "").startswith("not queued: the broker") for r in job.runs)


def test_operators_submitting_at_once_each_get_their_job(
    browser: Browser, fleet: list[str], sessions: sessionmaker[Session]
) -> None:
    signed_in = [browser("operator") for _ in range(6)]

    def submit(i: int) -> str:
        client, csrf = signed_in[i]
        form = {"csrf": csrf, **GOOD_FORM, "scope.comm": f"at-once-{i}"}
        got = client.post("/jobs/new", data=form, follow_redirects=False)
        assert got.status_code == 303, got.text[:300]
        return got.headers["location"].removeprefix("/jobs/")

    with ThreadPoolExecutor(len(signed_in)) as pool:
        made = list(pool.map(submit, range(len(signed_in))))
    assert len(set(made)) == len(signed_in)
    with sessions() as session:
        jobs = [session.get(Job, job_id) for job_id in made]
        comms = {job.scope.comm for job in jobs if job is not None}
    assert comms == {f"at-once-{i}" for i in range(len(signed_in))}
