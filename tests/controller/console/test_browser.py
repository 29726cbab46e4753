"""The console in a real headless Chromium against `fleettrace serve` with real agents.

Three agents, br-a, br-b and br-c, each confined to its own cgroup; tests put workloads
there whose answer is known. Element ids are the lanes' contract (notes of issue 14). Every
page visited is screenshotted to test-artifacts/console/, checked non-blank and free of
console errors.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.settings import Settings
from tests.controller.conftest import Agents, Tokens
from tests.controller.console.chrome import Chrome, chrome_at
from tests.controller.console.served import served
from tests.controller.support import get_job, job_final, wait_for, wait_job

pytestmark = pytest.mark.bcc

__all__ = ["chrome_at", "served"]  # fixtures this module uses, imported from their modules

HOSTS = ("br-a", "br-b", "br-c")
ODD = "br-c"
JOB_PAGE = re.compile(r"^/jobs/([0-9a-f-]{8,})$")
SCHEDULE_PAGE = re.compile(r"^/schedules/([0-9a-zA-Z_-]+)$")

OpenChrome = Callable[[str], Chrome]


@pytest.fixture(scope="module")
def fleet(agent: Agents) -> dict[str, Any]:
    return agent.start_all(HOSTS)


STEADY = "while True:\n    os.getppid()\n    time.sleep(0.01)\n"
# On CPU until killed after the test (bounded anyway): compiling the profiler takes seconds.
BUSY = "end = time.time() + 120\nwhile time.time() < end: pass\n"


class Workloads:
    """Processes started in a host's cgroup that wait for a go; killed after the test."""

    def __init__(self, groups: dict[str, Path]) -> None:
        self.groups = groups
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, host: str, loop: str) -> subprocess.Popen[bytes]:
        script = f"import os, sys, time\nsys.stdin.readline()\n{loop}"
        proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)
        (self.groups[host] / "cgroup.procs").write_text(str(proc.pid))
        self.procs.append(proc)
        return proc

    def go(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.close()

    def wait(self) -> None:
        for proc in self.procs:
            assert proc.wait(timeout=60) == 0

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def workloads(make_cgroup: Callable[[str], Path]) -> Iterator[Workloads]:
    """Each agent's cgroup (which it traces, so a test that traces needs this) made for the
    test, and the processes the test starts in them."""
    made = Workloads({host: make_cgroup(host) for host in HOSTS})
    yield made
    made.kill()


@pytest.fixture
def steady(workloads: Workloads) -> None:
    """br-a and br-b make a syscall every 10 ms for the whole test."""
    for host in ("br-a", "br-b"):
        workloads.start(host, STEADY)
    workloads.go()


def sign_in(chrome: Chrome, raw_token: str, start: str = "/fleet") -> None:
    """Through the form, from a page that sends an unknown visitor to it."""
    chrome.open(start)
    token = chrome.wait_for("input#token")
    assert chrome.path().startswith("/signin?next="), chrome.path()
    token.send_keys(raw_token)
    token.submit()
    chrome.wait_for("header.top nav")
    assert chrome.path() == start, chrome.path()


SignedIn = Callable[[str], Chrome]


@pytest.fixture
def signed_in(
    fleet: dict[str, Any], served: str, chrome_at: OpenChrome, tokens: Tokens
) -> SignedIn:
    """signed_in(role) -> a new browser on the stack, signed in with that role's token."""

    def open_as(role: str) -> Chrome:
        chrome = chrome_at(served)
        sign_in(chrome, tokens.token(role))
        return chrome

    return open_as


def fill(chrome: Chrome, css: str, value: str) -> None:
    field = chrome.wait_for(css)
    field.clear()
    field.send_keys(value)


def expect_refused(chrome: Chrome, status: int) -> None:
    """Drop the console's record of an answer we asked to be refused; nothing else may be."""
    severe = [e for e in chrome.log() if e.get("level") == "SEVERE"]
    unexpected = [e for e in severe if f"status of {status}" not in e.get("message", "")]
    assert not unexpected, unexpected


def post_form(chrome: Chrome, path: str, fields: dict[str, str]) -> int:
    """A same-origin form POST from the page's own session (its cookie goes along, as a
    forged form's would); the status."""
    status: int = chrome.driver.execute_async_script(
        """
        const [path, fields, done] = arguments;
        fetch(path, {method: "POST", body: new URLSearchParams(fields), redirect: "manual"})
          .then(r => done(r.status), e => done(String(e)));
        """,
        path,
        fields,
    )
    return status


def page_csrf(chrome: Chrome) -> str:
    value: str = chrome.driver.execute_script(
        "return document.querySelector('input[name=csrf]').value"
    )
    assert value
    return value


def mark_page(chrome: Chrome) -> None:
    chrome.driver.execute_script("window.__noReload = 1")


def assert_not_reloaded(chrome: Chrome) -> None:
    assert chrome.driver.execute_script("return window.__noReload") == 1, "the page reloaded"


def host_states(chrome: Chrome, hosts: tuple[str, ...]) -> dict[str, str]:
    return {h: " ".join(chrome.texts(f'tr[data-host="{h}"] td.state')) for h in hosts}


def submit_job(chrome: Chrome, program: str, hosts: tuple[str, ...], duration: str) -> str:
    """Fill /jobs/new and submit; the new job's id, read from the page it lands on."""
    from selenium.webdriver.support.ui import Select

    chrome.open("/jobs/new")
    Select(chrome.wait_for("select#program")).select_by_value(program)
    chrome.wait_for('input[name="targets"][value="names"]').click()
    fill(chrome, "#targets-names", ", ".join(hosts))
    fill(chrome, "#duration", duration)
    chrome.wait_for("button#submit-job").click()
    wait_for(lambda: JOB_PAGE.match(chrome.path()), 20, "the job's page", 0.1)
    found = JOB_PAGE.match(chrome.path())
    assert found
    return found.group(1)


# -- pages already on main: sign-in, fleet, sign-out ----------------------------------------------


def test_sign_in_shows_the_fleet_online_and_sign_out_ends_the_session(
    fleet: dict[str, Any], served: str, chrome_at: OpenChrome, tokens: Tokens
) -> None:
    chrome = chrome_at(served)
    chrome.open("/fleet")
    chrome.wait_for("input#token")
    chrome.screenshot("signin")
    sign_in(chrome, tokens.token("operator"))
    table = chrome.wait_for("table#hosts")
    rows = {r.split()[0]: r for r in chrome.texts("table#hosts tbody tr")}
    for host in ("br-a", "br-b"):
        assert host in rows and "online" in rows[host].split(), rows
    assert "test-operator" in chrome.wait_for("header.top").text
    assert table.is_displayed()
    chrome.screenshot("fleet")

    # The sign-out form refuses a POST without its CSRF token; the session survives it.
    assert post_form(chrome, "/signout", {}) == 403
    expect_refused(chrome, 403)
    chrome.open("/fleet")
    chrome.wait_for("table#hosts")

    chrome.wait_for("form.who button").click()
    chrome.wait_for("input#token")
    assert chrome.path().startswith("/signin"), chrome.path()
    chrome.open("/fleet")
    chrome.wait_for("input#token")
    assert chrome.path() == "/signin?next=/fleet", chrome.path()
    chrome.assert_no_console_errors()


def test_a_bad_token_is_told_on_the_sign_in_page(served: str, chrome_at: OpenChrome) -> None:
    chrome = chrome_at(served)
    chrome.open("/signin")
    token = chrome.wait_for("input#token")
    token.send_keys("ft_not-a-token")
    token.submit()
    chrome.wait_for("p.error", "Unknown or revoked API token.")
    expect_refused(chrome, 401)
    chrome.screenshot("signin-refused")


# -- lane h: /fleet by the contract (data-host rows, the capability matrix, the filter) ----------


def test_fleet_rows_matrix_and_label_filter(
    signed_in: SignedIn, tokens: Tokens, client: TestClient
) -> None:
    role = f"odd-{uuid.uuid4().hex[:6]}"
    answer = client.patch(
        f"/v1/hosts/{ODD}", json={"labels": {"role": role}}, headers=tokens.headers("admin")
    )
    assert answer.status_code == 200, answer.text
    chrome = signed_in("viewer")
    chrome.open("/fleet")
    for host in HOSTS:
        state = chrome.wait_for(f'table#hosts tr[data-host="{host}"] td.state')
        assert state.text.strip() == "online", state.text
    chrome.wait_for("table#matrix")
    cell = chrome.driver.execute_script(
        "const row = [...document.querySelectorAll('table#matrix tr')].find(r =>"
        " r.dataset.host === 'br-a' || r.cells[0]?.textContent.trim() === 'br-a');"
        "return row?.querySelector('td[data-program=\"syscalls\"]')?.textContent.trim()"
    )
    assert cell == "yes", cell
    chrome.screenshot("fleet-matrix")
    chrome.open(f"/fleet?selector=role%3D{role}")
    chrome.wait_for(f'table#hosts tr[data-host="{ODD}"]')
    shown = chrome.driver.execute_script(
        "return [...document.querySelectorAll('table#hosts tr[data-host]')]"
        ".map(r => r.dataset.host)"
    )
    assert shown == [ODD], shown
    chrome.screenshot("fleet-filtered")


# -- lanes f and l: a job through the form, live to succeeded, its report ------------------------


def test_a_syscalls_job_submitted_on_two_hosts_goes_live_to_succeeded(
    signed_in: SignedIn, steady: None
) -> None:
    chrome = signed_in("operator")
    chrome.open("/jobs/new")
    chrome.wait_for("button#submit-job")
    chrome.screenshot("job-new")
    job_id = submit_job(chrome, "syscalls", ("br-a", "br-b"), "4s")
    mark_page(chrome)
    early = host_states(chrome, ("br-a", "br-b"))
    # Seen before it ended: what follows is the page updating itself.
    assert not any(s == "succeeded" for s in early.values()), early
    chrome.screenshot("job-running")
    for host in ("br-a", "br-b"):
        chrome.wait_for(f'tr[data-host="{host}"] td.state', "succeeded", timeout=40)
    chrome.wait_for("#job-state", "succeeded", timeout=20)
    chrome.wait_for("section#report", timeout=20)
    assert_not_reloaded(chrome)
    assert not chrome.texts("form#cancel"), "a finished job offers cancel"
    downloads = chrome.texts("a.download")
    assert len(downloads) >= 3, downloads
    chrome.screenshot("job-succeeded")

    chrome.open("/jobs")
    row = chrome.wait_for(f'table#jobs tr[data-job="{job_id}"]')
    row.find_element("css selector", f'a[href="/jobs/{job_id}"]').click()
    chrome.wait_for("#job-state", "succeeded")
    chrome.driver.back()
    chrome.wait_for(f'table#jobs tr[data-job="{job_id}"]')
    assert chrome.path() == "/jobs", chrome.path()
    chrome.screenshot("jobs")


def test_the_report_names_the_host_made_to_differ_first(
    signed_in: SignedIn, tokens: Tokens, client: TestClient, workloads: Workloads
) -> None:
    calls = {"br-a": 2000, "br-b": 2600, ODD: 40000}
    for host, n in calls.items():
        workloads.start(host, f"for _ in range({n}): os.getppid()\n")
    chrome = signed_in("operator")
    # Long enough that the workloads, started once every run is seen running, end inside the
    # trace even when the machine is loaded (at 4 s, a late "running" once left them outside).
    job_id = submit_job(chrome, "syscalls", HOSTS, "10s")
    mark_page(chrome)
    viewer = tokens.headers("viewer")

    def all_running(job: dict[str, Any]) -> bool:
        return all(run["state"] == "running" for run in job["runs"])

    wait_job(client, viewer, job_id, all_running, 30, "all runs running")
    workloads.go()
    workloads.wait()
    done = wait_job(client, viewer, job_id, job_final, 40, "the job to finish")
    assert done["state"] == "succeeded", done
    report = client.get(f"/v1/jobs/{job_id}/report", headers=viewer).json()
    assert report["outliers"], f"no outliers: {report}"[:4000]
    first = report["outliers"][0]
    assert first["host"] == ODD, report["outliers"]

    chrome.wait_for("section#report ul#outliers li", timeout=30)
    sentences = chrome.texts("ul#outliers li")
    assert sentences[0] == first["sentence"], sentences
    assert sentences[0].startswith(f"{ODD}: syscalls"), sentences
    assert any("getppid" in s for s in sentences if s.startswith(f"{ODD}:")), sentences
    # Outliers come first in the report, before its charts.
    order = chrome.driver.execute_script(
        "const r = document.querySelector('section#report');"
        "const o = r.querySelector('ul#outliers'), s = r.querySelector('svg');"
        "return s === null || !!(o.compareDocumentPosition(s) & Node.DOCUMENT_POSITION_FOLLOWING)"
    )
    assert order, "a chart comes before the outlier sentences"
    assert_not_reloaded(chrome)
    chrome.screenshot("report-outlier")


def test_a_cpu_profile_job_opens_its_flame_graph(
    signed_in: SignedIn, tokens: Tokens, client: TestClient, workloads: Workloads
) -> None:
    workloads.start("br-a", BUSY)
    workloads.go()
    chrome = signed_in("operator")
    job_id = submit_job(chrome, "cpu_profile", ("br-a",), "3s")
    done = wait_job(client, tokens.headers("viewer"), job_id, job_final, 40, "the profile")
    assert done["state"] == "succeeded", done
    folded = client.get(
        f"/v1/jobs/{job_id}/report", params={"format": "folded"}, headers=tokens.headers("viewer")
    )
    assert folded.text.startswith("python;"), f"no samples of the busy loop: {folded.text!r}"
    chrome.wait_for("section#report", timeout=30)
    # The contract allows the flame graph inline or behind a link: follow the link if any.
    for link in chrome.driver.find_elements("css selector", "a#flame"):
        link.click()
    flame = chrome.wait_for("section#flame", timeout=20)
    frames = flame.find_elements("css selector", "svg rect, svg g")
    assert frames, "the flame graph has no frames"
    assert "python" in flame.text.lower() or "python" in flame.get_attribute("innerHTML").lower()
    chrome.screenshot("flame")


def test_a_bad_duration_is_shown_next_to_its_field_with_the_apis_message(
    signed_in: SignedIn, settings: Settings
) -> None:
    chrome = signed_in("operator")
    chrome.open("/jobs/new")
    # Everything else valid, so the duration is what the service refuses.
    chrome.wait_for('input[name="targets"][value="names"]').click()
    fill(chrome, "#targets-names", "br-a")
    fill(chrome, "#duration", "20m")
    chrome.wait_for("button#submit-job").click()
    error = chrome.wait_for('p.field-error[data-field="duration_s"]')
    assert error.text == f"1200s is above the limit of {settings.max_duration_s:g}s", error.text
    assert chrome.path().startswith("/jobs/new"), chrome.path()
    expect_refused(chrome, 422)
    chrome.screenshot("job-new-error")


# -- lane s: a schedule through the form, its trend after two slots -------------------------------


def test_a_schedule_made_in_the_form_shows_its_trend_linking_to_jobs(
    signed_in: SignedIn, tokens: Tokens, client: TestClient, steady: None
) -> None:
    from selenium.webdriver.support.ui import Select

    chrome = signed_in("operator")
    chrome.open("/schedules/new")
    name = f"br-{uuid.uuid4().hex[:6]}"
    chrome.wait_for("#schedule-name").send_keys(name)
    chrome.wait_for("#schedule-interval").send_keys("4s")
    Select(chrome.wait_for("select#program")).select_by_value("syscalls")
    chrome.wait_for('input[name="targets"][value="names"]').click()
    fill(chrome, "#targets-names", "br-a br-b")
    fill(chrome, "#duration", "1s")
    chrome.screenshot("schedule-new")
    chrome.wait_for("button#submit-schedule").click()
    wait_for(lambda: SCHEDULE_PAGE.match(chrome.path()), 20, "the schedule's page", 0.1)
    found = SCHEDULE_PAGE.match(chrome.path())
    assert found and found.group(1) != "new", chrome.path()
    ref = found.group(1)  # the console names a schedule by its name (or id)
    chrome.wait_for("form#pause")
    chrome.screenshot("schedule")

    viewer = tokens.headers("viewer")
    listed = client.get("/v1/schedules", params={"limit": 500}, headers=viewer).json()["data"]
    (schedule_id,) = [s["id"] for s in listed if s["name"] == name]
    assert ref in (name, schedule_id), ref

    def two_done() -> list[str] | None:
        shown = client.get(f"/v1/schedules/{schedule_id}", headers=viewer).json()
        ids = [f["job_id"] for f in shown["recent"] if f["job_id"]]
        done = [j for j in ids if job_final(get_job(client, viewer, j))]
        return done if len(done) >= 2 else None

    jobs = wait_for(two_done, 60, "two scheduled jobs to finish", 0.5)
    chrome.wait_for("form#pause button").click()
    chrome.wait_for("form#resume")

    chrome.open(f"/schedules/{ref}/trend?metric=rate%3Asyscalls")
    chrome.wait_for("svg#trend", timeout=20)
    linked = chrome.driver.execute_script(
        "return [...document.querySelectorAll('svg#trend a[data-job]')]"
        ".map(a => [a.dataset.job, a.getAttribute('href') || a.getAttribute('xlink:href')])"
    )
    assert {j for j, _ in linked} >= set(jobs[:2]), (linked, jobs)
    assert all(href == f"/jobs/{j}" for j, href in linked), linked
    chrome.screenshot("trend")
    chrome.open("/schedules")
    chrome.wait_for(f'table#schedules tr[data-schedule="{ref}"]')
    chrome.screenshot("schedules")


# -- roles and forgery -----------------------------------------------------------------------------


def test_a_viewer_sees_no_submit_button_and_forged_posts_are_refused(
    signed_in: SignedIn, tokens: Tokens, client: TestClient
) -> None:
    viewer = signed_in("viewer")
    viewer.open("/jobs")
    viewer.wait_for("table#jobs")
    assert not viewer.texts("button#submit-job")
    assert not viewer.driver.find_elements("css selector", 'a[href="/jobs/new"]')
    viewer.screenshot("jobs-viewer")
    viewer.open("/jobs/new")
    viewer.wait_for("main")
    assert not viewer.driver.find_elements("css selector", "button#submit-job")
    expect_refused(viewer, 403)

    def job_ids() -> list[str]:
        answer = client.get("/v1/jobs", params={"limit": 500}, headers=tokens.headers("viewer"))
        return [j["id"] for j in answer.json()["data"]]

    before = job_ids()
    form = {
        "program": "syscalls",
        "targets": "names",
        "targets.names": "br-a",
        "duration": "1s",
    }
    # The viewer's own session and CSRF token: refused for the role.
    viewer.open("/fleet")
    viewer.wait_for("table#hosts")
    assert post_form(viewer, "/jobs/new", {**form, "csrf": page_csrf(viewer)}) == 403
    expect_refused(viewer, 403)

    # An operator's session without the CSRF token (what a cross-site form sends): refused.
    operator = signed_in("operator")
    assert post_form(operator, "/jobs/new", form) == 403
    assert post_form(operator, "/jobs/new", {**form, "csrf": "forged"}) == 403
    expect_refused(operator, 403)
    assert job_ids() == before, "a refused form made a job"


def test_the_hosts_in_page_offers_adding_a_host_to_an_admin(signed_in: SignedIn) -> None:
    chrome = signed_in("admin")
    chrome.open("/hosts-in")
    chrome.wait_for("form#add-host")
    chrome.wait_for("form#bootstrap")
    chrome.screenshot("hosts-in")
