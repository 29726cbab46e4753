"""bpftrace in the console: the new-job form offers it to admins only, its script in a textarea
kept exactly as typed, the API's refusal beside `params.script`; the job page shows the script
and the maps' results as for any program. Against the real app, database and Celery on Redis;
the Chromium test drives the served form with forms.js under the console's CSP."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.jobs.models import Job
from controller.schedules.models import Schedule
from node_agent.bpftrace.script import check_script
from node_agent.errors import PolicyViolation
from node_agent.kinds.counter_table import CounterTable, KeyField
from tests.controller.conftest import Feeder, RecordingDispatcher, Tokens
from tests.controller.console.test_job_page import parse
from tests.controller.console.test_jobs_form_js import chrome, served  # noqa: F401
from tests.controller.console.test_jobs_pages import field_error
from tests.controller.support import register_host, snapshot, state

Browser = Callable[[str], tuple[TestClient, str]]
SCRIPT = "tracepoint:syscalls:sys_enter_openat { @[comm] = count(); }"
# A first line that is empty: HTML drops a newline right after <textarea>, the form must not.
MULTI = "\n// opens per process\ntracepoint:syscalls:sys_enter_openat\n{\n  @[comm] = count();\n}\n"


def _refusal(script: str) -> str:
    with pytest.raises(PolicyViolation) as refused:
        check_script(script)
    return refused.value.message


def _hosts(client: TestClient, tokens: Tokens) -> list[str]:
    names = [f"bt{uuid.uuid4().hex[:6]}-{i}" for i in range(2)]
    for name in names:
        register_host(client, tokens.headers("admin"), name)
    return names


def _textarea(page: str, name: str) -> str:
    """What a browser shows in the textarea: its text, less the one newline after the tag."""
    found = re.search(rf'<textarea [^>]*name="{re.escape(name)}"[^>]*>(.*?)</textarea>', page, re.S)
    assert found, page[:2000]
    return html.unescape(found.group(1)).removeprefix("\n")


def _form(csrf: str, hosts: list[str], **fields: str) -> dict[str, str]:
    return {
        "csrf": csrf,
        "program": "bpftrace",
        "targets": "names",
        "targets.names": ", ".join(hosts),
        "duration": "2s",
        **fields,
    }


def test_the_form_offers_bpftrace_to_admins_with_a_textarea(browser: Browser) -> None:
    operator, _ = browser("operator")
    assert '<option value="bpftrace"' not in operator.get("/jobs/new").text
    admin, _ = browser("admin")
    assert '<option value="bpftrace"' in admin.get("/jobs/new").text
    page = admin.get("/jobs/new?program=bpftrace").text
    assert '<option value="bpftrace" selected>' in page
    assert re.search(r'<textarea id="param-script" name="params.script" rows="\d+"', page)
    assert '<input id="param-keys" name="params.keys" type="text"' in page
    assert "at most 65536 characters" in page
    assert "<script>" not in page  # CSP: no inline script


def test_the_apis_refusal_is_beside_the_script_and_the_script_is_kept(
    browser: Browser, client: TestClient, tokens: Tokens
) -> None:
    hosts = _hosts(client, tokens)
    admin, csrf = browser("admin")
    got = admin.post("/jobs/new", data=_form(csrf, hosts, **{"params.script": " \n "}))
    assert got.status_code == 422, got.text[:500]
    body = {"program": "bpftrace", "params": {"script": " \n "}, "duration_s": 2,
            "targets": {"hosts": hosts}}  # fmt: skip
    api = client.post("/v1/jobs", json=body, headers=tokens.headers("admin"))
    assert api.status_code == 422
    assert field_error(got.text, "params.script") == api.json()["detail"][0]["msg"]
    assert _refusal(" \n ") in field_error(got.text, "params.script")  # type: ignore[operator]
    # Another field's error: the script comes back exactly as typed, first empty line and all.
    fields = {"params.script": MULTI, "params.keys": "k" * 2000}
    got = admin.post("/jobs/new", data=_form(csrf, hosts, **fields))
    assert got.status_code == 422
    assert field_error(got.text, "params.keys")
    assert _textarea(got.text, "params.script") == MULTI


def test_an_operator_posting_bpftrace_is_refused_beside_program(
    browser: Browser, client: TestClient, tokens: Tokens, dispatcher: RecordingDispatcher
) -> None:
    hosts = _hosts(client, tokens)
    operator, csrf = browser("operator")
    sent = len(dispatcher.sent)
    got = operator.post("/jobs/new", data=_form(csrf, hosts, **{"params.script": SCRIPT}))
    assert got.status_code == 403
    assert "needs the admin role" in (field_error(got.text, "program") or "")
    assert len(dispatcher.sent) == sent


def test_an_admins_job_runs_and_its_page_shows_the_script_and_the_map(
    browser: Browser,
    client: TestClient,
    tokens: Tokens,
    feeder: Feeder,
    sessions: sessionmaker[Session],
) -> None:
    hosts = _hosts(client, tokens)
    admin, csrf = browser("admin")
    hostile = MULTI + "// </pre><script>alert(1)</script>\n"
    got = admin.post(
        "/jobs/new", data=_form(csrf, hosts, **{"params.script": hostile}), follow_redirects=False
    )
    assert got.status_code == 303, got.text[:500]
    job_id = got.headers["location"].removeprefix("/jobs/")
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.params["script"] == hostile
        runs = {r.host_name: r.id for r in job.runs}
    counts = {hosts[0]: {"nginx": 40, "<b>x</b>": 3}, hosts[1]: {"nginx": 10, "bash": 30}}
    for host, rows in counts.items():
        table = CounterTable(
            name="@",
            key_fields=[KeyField(name="comm")],
            rows=[([k], [v]) for k, v in sorted(rows.items(), key=lambda kv: -kv[1])],
            total_rows=len(rows),
        )
        feeder(
            host,
            state(runs[host], "running"),
            snapshot(runs[host], 0, [table], final=True),
            state(runs[host], "succeeded"),
            job_id=job_id,
        )
    page = admin.get(f"/jobs/{job_id}").text
    tree = parse(page)
    assert tree.one("pre", id="job-script").text().removeprefix("\n") == hostile
    assert "<script>alert(1)" not in page and "<b>x</b>" not in page
    report = tree.one("section", id="report")
    assert "@: fleet top keys" in [svg.attrs.get("aria-label") for svg in report.all("svg")]
    assert "nginx" in report.text() and "<b>x</b>" in report.text()  # escaped, shown as text


def test_chromium_submits_a_bpftrace_script_from_the_form(
    served: str,  # noqa: F811
    chrome: Any,  # noqa: F811
    client: TestClient,
    tokens: Tokens,
    sessions: sessionmaker[Session],
) -> None:
    hosts = _hosts(client, tokens)
    chrome.get(f"{served}/signin")
    chrome.find_element(By.NAME, "token").send_keys(tokens.token("admin"))
    chrome.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    WebDriverWait(chrome, 10).until(lambda d: "/fleet" in d.current_url)
    chrome.get(f"{served}/jobs/new")
    chrome.find_element(By.ID, "targets-names").send_keys(hosts[0])
    Select(chrome.find_element(By.ID, "program")).select_by_value("bpftrace")
    WebDriverWait(chrome, 10).until(lambda d: "program=bpftrace" in d.current_url)
    chrome.find_element(By.ID, "param-script").send_keys("   ")
    chrome.find_element(By.ID, "submit-job").click()
    error = WebDriverWait(chrome, 10).until(
        lambda d: d.find_element(By.CSS_SELECTOR, 'p.field-error[data-field="params.script"]')
    )
    assert _refusal("   ") in error.text
    script = chrome.find_element(By.ID, "param-script")
    assert script.get_attribute("value") == "   "  # what was typed, kept
    script.clear()
    script.send_keys(MULTI)
    chrome.find_element(By.ID, "submit-job").click()
    WebDriverWait(chrome, 10).until(lambda d: "/jobs/new" not in d.current_url)
    job_id = chrome.current_url.removeprefix(served).removeprefix("/jobs/")
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.params["script"] == MULTI  # LF, as typed
    shown = chrome.find_element(By.ID, "job-script").text
    assert "@[comm] = count();" in shown and "// opens per process" in shown
    scripts = [e for e in chrome.get_log("browser") if e.get("source") != "network"]
    assert scripts == []  # no CSP refusal, no script error


def _schedule_form(hosts: list[str], **change: str) -> dict[str, str]:
    return {
        "name": f"bt-{uuid.uuid4().hex[:8]}",
        "time_zone": "UTC",
        "interval": "1h",
        "misfire_grace": "1m",
        "enabled": "on",
        "program": "bpftrace",
        "params.script": MULTI,
        "targets": "names",
        "targets.names": ", ".join(hosts),
        "duration": "30s",
        **change,
    }


def test_schedules_of_bpftrace_in_the_console_are_for_admins(
    browser: Browser, client: TestClient, tokens: Tokens, sessions: sessionmaker[Session]
) -> None:
    hosts = _hosts(client, tokens)
    operator, op_csrf = browser("operator")
    admin, csrf = browser("admin")
    offered = re.findall(r'<option value="([a-z_]+)"', admin.get("/schedules/new").text)
    assert "bpftrace" in offered and "custom" not in offered  # schedules run no custom C
    offered = re.findall(r'<option value="([a-z_]+)"', operator.get("/schedules/new").text)
    assert "bpftrace" not in offered and "custom" not in offered

    fields = _schedule_form(hosts)
    refused = operator.post("/schedules/new", data={**fields, "csrf": op_csrf})
    assert refused.status_code == 403
    assert "needs the admin role" in (field_error(refused.text, "program") or "")
    made = admin.post("/schedules/new", data={**fields, "csrf": csrf}, follow_redirects=False)
    assert made.status_code == 303, made.text[:1000]
    with sessions() as session:
        schedule = session.scalar(select(Schedule).where(Schedule.name == fields["name"]))
        assert schedule is not None and schedule.template["params"]["script"] == MULTI
    shown = parse(admin.get(f"/schedules/{fields['name']}").text)
    assert shown.one("pre", id="schedule-script").text().removeprefix("\n") == MULTI
    # Its edit form keeps the script exactly; an operator may not change it.
    edit = admin.get(f"/schedules/{fields['name']}/edit").text
    assert _textarea(edit, "params.script") == MULTI
    changed = _schedule_form(hosts, name=fields["name"], interval="2h")
    got = operator.post(f"/schedules/{fields['name']}/edit", data={**changed, "csrf": op_csrf})
    assert got.status_code == 403, got.text[:1000]
    assert "needs the admin role" in got.text
