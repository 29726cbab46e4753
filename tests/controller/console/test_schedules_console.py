"""Schedules in the console on the real database and Redis: the list, a schedule's page and
its controls (the same service functions as the API), the trend with its linked dots."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.jobs.models import Job
from controller.schedules.models import Schedule, ScheduleFire
from node_agent.protocol import Log2Histogram
from tests.controller.conftest import RecordingDispatcher, Tokens
from tests.controller.console.dom import Node, parse
from tests.controller.support import counters, register_host
from tests.controller.test_schedules import _put_results, body, make

Browser = Callable[[str], tuple[TestClient, str]]


@pytest.fixture(scope="module")
def fleet(client: TestClient, tokens: Tokens) -> tuple[str, list[str]]:
    """A label only this module's two hosts carry, and the hosts."""
    role = f"con-{uuid.uuid4().hex[:6]}"
    hosts = [f"{role}-a", f"{role}-b"]
    for host in hosts:
        register_host(client, tokens.headers("admin"), host, role=role)
    return role, hosts


@pytest.fixture
def schedule(client: TestClient, tokens: Tokens, fleet: tuple[str, list[str]]) -> dict[str, Any]:
    """A new interval schedule over the module's hosts, made through the API."""
    return make(client, tokens, fleet[0], interval_s=300)


def stored(sessions: sessionmaker[Session], schedule_id: str) -> Schedule | None:
    with sessions() as session:
        return session.get(Schedule, schedule_id)


def fires(sessions: sessionmaker[Session], schedule_id: str) -> list[ScheduleFire]:
    with sessions() as session:
        query = select(ScheduleFire).where(ScheduleFire.schedule_id == schedule_id)
        return list(session.scalars(query.order_by(ScheduleFire.id)))


def get(client: TestClient, url: str, status: int = 200) -> Node:
    answer = client.get(url)
    assert answer.status_code == status, answer.text[:500]
    assert answer.headers["content-type"].startswith("text/html")
    return parse(answer.text)


def having(node: Node, tag: str, attribute: str) -> list[Node]:
    """The `tag` elements inside that carry `attribute`, whatever its value."""
    return [n for n in node.all(tag) if attribute in n.attrs]


def cells_of(row: Node) -> list[Node]:
    return list(row.all("td"))


def row_of(page: Node, name: str) -> Node:
    return page.one("table", id="schedules").one("tr", data_schedule=name)


# -- the list -------------------------------------------------------------------------------------


def test_the_list_says_each_schedules_timing_targets_state_and_last_job(
    browser: Browser, client: TestClient, tokens: Tokens, fleet: tuple[str, list[str]]
) -> None:
    role, _ = fleet
    every = make(client, tokens, role, interval_s=300)
    nightly = make(client, tokens, role, interval_s=None, cron="0 3 * * *", time_zone="Asia/Tokyo")
    paused = make(client, tokens, role, interval_s=90, enabled=False)
    ran = client.post(f"/v1/schedules/{every['id']}/run", headers=tokens.headers("operator"))
    job_id = ran.json()["recent"][0]["job_id"]

    viewer, _ = browser("viewer")
    page = get(viewer, "/schedules")
    cells = [td.text for td in row_of(page, every["name"]).all("td")]
    assert cells[1:5] == ["every 5 min", "syscalls", f"role={role}", "enabled"]
    assert cells[5].endswith("UTC") and re.fullmatch(r"\d+ s ago", cells[6])
    link = row_of(page, every["name"]).one("a", data_job=job_id)
    assert link.attrs["href"] == f"/jobs/{job_id}"
    name_cell = cells_of(row_of(page, every["name"]))[0]
    assert name_cell.one("a").attrs["href"] == f"/schedules/{every['name']}"
    cells = [td.text for td in row_of(page, nightly["name"]).all("td")]
    assert cells[1] == "cron 0 3 * * * (Asia/Tokyo)" and cells[6] == "never"
    assert [td.text for td in row_of(page, paused["name"]).all("td")][4:6] == ["paused", "—"]
    assert not page.has("a", id="new-schedule")  # a viewer gets no control it may not use
    operator, _ = browser("operator")
    assert get(operator, "/schedules").one("a", id="new-schedule").attrs["href"] == "/schedules/new"


def test_a_continuous_schedule_is_flagged(
    browser: Browser, client: TestClient, tokens: Tokens, fleet: tuple[str, list[str]]
) -> None:
    role, _ = fleet
    template = {"program": "syscalls", "duration_s": 60, "targets": {"selector": {"role": role}}}
    made = make(client, tokens, role, interval_s=10, continuous=True, template=template)
    viewer, _ = browser("viewer")
    name_cell = cells_of(row_of(get(viewer, "/schedules"), made["name"]))[0]
    assert name_cell.one("span", cls="label").text == "continuous"
    assert cells_of(row_of(get(viewer, "/schedules"), made["name"]))[1].text == (
        "every 10 s (a job per 1 min)"
    )


# -- a schedule's page and its controls -----------------------------------------------------------


def test_pause_resume_run_now_and_delete_change_the_stored_schedule(
    browser: Browser,
    schedule: dict[str, Any],
    sessions: sessionmaker[Session],
    dispatcher: RecordingDispatcher,
) -> None:
    operator, csrf = browser("operator")
    url = f"/schedules/{schedule['name']}"
    page = get(operator, url)
    assert page.one("span", id="schedule-state").text == "enabled"
    assert not page.has("form", id="resume")
    for form in ("pause", "run-now", "delete"):
        assert page.one("form", id=form).one("input", name="csrf").attrs["value"] == csrf
    assert "Delete schedule" in page.one("form", id="delete").attrs["data-confirm"]

    done = operator.post(f"{url}/pause", data={"csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == url
    paused = stored(sessions, schedule["id"])
    assert paused is not None and not paused.enabled and paused.next_fire_at is None
    page = get(operator, url)
    assert page.one("span", id="schedule-state").text == "paused"
    assert page.has("form", id="resume") and not page.has("form", id="pause")

    done = operator.post(f"{url}/resume", data={"csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303
    resumed = stored(sessions, schedule["id"])
    assert resumed is not None and resumed.enabled and resumed.next_fire_at is not None

    done = operator.post(f"{url}/run", data={"csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == url
    [fire] = fires(sessions, schedule["id"])
    assert fire.manual and fire.outcome == "fired" and fire.job_id is not None
    with sessions() as session:
        job = session.get(Job, fire.job_id)
        assert job is not None and job.created_by == f"schedule:{schedule['name']}"
        sent_runs = {r.run_id for _, r in dispatcher.sent}
        assert {run.id for run in job.runs} <= sent_runs  # really queued on Redis
    slot = get(operator, url).one("table", id="fires").one("tr", data_job=fire.job_id)
    assert slot.one("a").attrs["href"] == f"/jobs/{fire.job_id}"
    assert "run now" in slot.text

    done = operator.post(f"{url}/delete", data={"csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/schedules"
    assert stored(sessions, schedule["id"]) is None
    gone = get(operator, url, status=404)
    assert f"no schedule '{schedule['name']}'" in gone.text


def test_an_operator_may_neither_pause_nor_resume_an_admins_bpftrace_schedule(
    browser: Browser,
    client: TestClient,
    tokens: Tokens,
    fleet: tuple[str, list[str]],
    sessions: sessionmaker[Session],
) -> None:
    script = "tracepoint:syscalls:sys_enter_getppid { @ = count(); }"
    template = {
        "program": "bpftrace",
        "params": {"script": script},
        "duration_s": 2,
        "targets": {"selector": {"role": fleet[0]}},
    }
    made = client.post(
        "/v1/schedules", json=body(fleet[0], template=template), headers=tokens.headers("admin")
    )
    assert made.status_code == 201, made.text
    schedule = made.json()
    operator, csrf = browser("operator")
    url = f"/schedules/{schedule['name']}"

    def refused(action: str, enabled: bool) -> None:
        answer = operator.post(f"{url}/{action}", data={"csrf": csrf}, follow_redirects=False)
        assert answer.status_code == 403, (action, answer.text[:500])
        assert "needs the admin role" in answer.text
        kept = stored(sessions, schedule["id"])
        assert kept is not None and kept.enabled is enabled, action

    refused("pause", True)
    refused("delete", True)
    admin, admin_csrf = browser("admin")
    paused = admin.post(f"{url}/pause", data={"csrf": admin_csrf}, follow_redirects=False)
    assert paused.status_code == 303
    refused("resume", False)
    refused("delete", False)
    resumed = admin.post(f"{url}/resume", data={"csrf": admin_csrf}, follow_redirects=False)
    assert resumed.status_code == 303
    kept = stored(sessions, schedule["id"])
    assert kept is not None and kept.enabled and kept.next_fire_at is not None


def test_the_page_answers_to_the_id_too(browser: Browser, schedule: dict[str, Any]) -> None:
    viewer, _ = browser("viewer")
    page = get(viewer, f"/schedules/{schedule['id']}")
    assert page.one("h1").text.startswith(f"Schedule {schedule['name']}")


def test_a_viewer_sees_no_control_and_its_posts_change_nothing(
    browser: Browser, schedule: dict[str, Any], sessions: sessionmaker[Session]
) -> None:
    viewer, csrf = browser("viewer")
    url = f"/schedules/{schedule['name']}"
    page = get(viewer, url)
    for form in ("pause", "resume", "run-now", "delete"):
        assert not page.has("form", id=form), form
    assert not page.has("a", id="edit")
    for action in ("pause", "resume", "run", "delete"):
        refused = viewer.post(f"{url}/{action}", data={"csrf": csrf}, follow_redirects=False)
        assert refused.status_code == 403, action
        assert "this needs the operator role" in refused.text
    kept = stored(sessions, schedule["id"])
    assert kept is not None and kept.enabled and fires(sessions, schedule["id"]) == []


@pytest.mark.parametrize(
    "ref",
    ["no-such-schedule", "<img src=x onerror=alert(1)>", "00000000-0000-0000-0000-000000000000"],
)
def test_an_unknown_schedule_is_a_404_page(browser: Browser, ref: str) -> None:
    viewer, csrf = browser("viewer")
    for url in (f"/schedules/{ref}", f"/schedules/{ref}/trend?metric=p99:lat"):
        answer = viewer.get(url)
        assert answer.status_code == 404 and answer.headers["content-type"].startswith("text/html")
        assert "<img" not in answer.text
        assert "no schedule" in parse(answer.text).one("p", cls="error").text
    operator, csrf = browser("operator")
    answer = operator.post(f"/schedules/{ref}/run", data={"csrf": csrf})
    assert answer.status_code == 404


def test_hostile_template_text_is_escaped(
    browser: Browser, client: TestClient, tokens: Tokens, fleet: tuple[str, list[str]]
) -> None:
    role, _ = fleet
    comm = '<b id="x">&'
    template = {
        "program": "syscalls",
        "duration_s": 2,
        "scope": {"comm": comm},
        "targets": {"selector": {"role": role}},
    }
    made = make(client, tokens, role, template=template)
    viewer, _ = browser("viewer")
    answer = viewer.get(f"/schedules/{made['name']}")
    assert answer.status_code == 200
    assert "comm=&lt;b id=&#34;x&#34;&gt;&amp;" in answer.text and '<b id="x">' not in answer.text
    labels = parse(answer.text).one("table", id="template").all("span", cls="label")
    assert [label.text for label in labels][-1] == f"comm={comm}"


# -- the trend ------------------------------------------------------------------------------------


@pytest.fixture
def two_fires(
    browser: Browser,
    schedule: dict[str, Any],
    sessions: sessionmaker[Session],
    fleet: tuple[str, list[str]],
) -> list[str]:
    """Two slots of `schedule` run now through the console, each host's results stored: the
    job ids."""
    hosts = fleet[1]
    operator, csrf = browser("operator")
    jobs = []
    for run in range(2):
        done = operator.post(
            f"/schedules/{schedule['name']}/run", data={"csrf": csrf}, follow_redirects=False
        )
        assert done.status_code == 303
        job_id = fires(sessions, schedule["id"])[-1].job_id
        assert job_id is not None
        jobs.append(job_id)
        # Host a: 100 + 10 * run events of 8-15 us; host b: 1,000 more of 512-1023 us.
        results: dict[str, list[Any]] = {
            host: [
                Log2Histogram(
                    name="lat", unit="us", buckets=[(4 + 6 * i, 100 + 10 * run + 1000 * i)]
                ),
                counters("syscalls", {"<script>alert(1)</script>": 5 + run, "read": 1}),
            ]
            for i, host in enumerate(hosts)
        }
        _put_results(sessions, job_id, results)
    return jobs


def dots(chart: Node) -> dict[str, list[str]]:
    """Each linked dot's job id, by the dot's title (host, slot, value)."""
    found: dict[str, list[str]] = {}
    for link in having(chart, "a", "data-job"):
        assert link.attrs["href"] == f"/jobs/{link.attrs['data-job']}"
        title = link.one("circle").one("title").text
        found.setdefault(title.split(" ")[0], []).append(link.attrs["data-job"])
    return found


def test_the_trend_has_a_linked_dot_per_host_per_fire(
    browser: Browser, schedule: dict[str, Any], fleet: tuple[str, list[str]], two_fires: list[str]
) -> None:
    hosts, jobs = fleet[1], two_fires
    viewer, _ = browser("viewer")
    base = f"/schedules/{schedule['name']}/trend"
    first = viewer.get(base, follow_redirects=False)  # no metric: the first offered one
    assert first.status_code == 303
    assert parse_qs(urlsplit(first.headers["location"]).query) == {"metric": ["total:syscalls"]}

    page = get(viewer, f"{base}?metric=count:lat")
    offered = [a.text for a in page.one("p", cls="metrics").all("a", cls="metric")]
    assert offered == [
        "total:syscalls",
        "rate:syscalls",
        "p50:lat",
        "p90:lat",
        "p99:lat",
        "count:lat",
    ]
    chart = page.one("svg", id="trend")
    assert dots(chart) == {hosts[0]: jobs, hosts[1]: jobs}
    titles = [c.one("title").text for c in chart.all("circle")]
    assert any(t.startswith(hosts[1]) and t.endswith(": 1,110 events") for t in titles)
    strokes = {p.attrs["stroke"] for p in chart.all("polyline")}
    assert {"var(--oi-1)", "var(--oi-2)"} <= strokes  # Okabe-Ito, from console.css
    for i, host in enumerate(hosts):
        figure = page.one("figure", data_host=host)
        assert dots(figure) == {host: jobs}
        assert figure.one("span", cls="num").text == f"{110 + 1000 * i:,} events"
    values = page.one("table", id="trend-values")
    assert [r.attrs["data-job"] for r in having(values, "tr", "data-job")] == jobs[::-1]
    newest = values.one("tr", data_job=jobs[1])
    assert [td.text for td in newest.all("td")][2:] == ["110 events", "1,110 events"]

    # p99 in microseconds says milliseconds too; one host picked: one series.
    page = get(viewer, f"{base}?metric=p99:lat&host={hosts[1]}")
    chart = page.one("svg", id="trend")
    assert dots(chart) == {hosts[1]: jobs}
    assert page.one("figure", data_host=hosts[1]).one("span", cls="num").text == (
        "1,023 us (1.0 ms)"
    )
    assert page.one("input", name="host", value=hosts[1]).attrs.get("checked") is not None


def test_a_bad_or_hostile_metric_is_named_next_to_its_field(
    browser: Browser, schedule: dict[str, Any], fleet: tuple[str, list[str]], two_fires: list[str]
) -> None:
    jobs = two_fires
    viewer, _ = browser("viewer")
    base = f"/schedules/{schedule['name']}/trend"
    bad = viewer.get(base, params={"metric": "p200:lat<i>"})
    assert bad.status_code == 422 and "<i>" not in bad.text
    page = parse(bad.text)
    assert page.one("input", id="metric").attrs["value"] == "p200:lat<i>"  # kept
    assert "bad" in page.one("p", cls="field-error", data_field="metric").text
    # A key an agent reported (a process could name itself so) is a metric, shown escaped.
    hostile = "key:syscalls:<script>alert(1)</script>"
    answer = viewer.get(base, params={"metric": hostile})
    assert answer.status_code == 200 and "<script>alert" not in answer.text
    titles = [c.one("title").text for c in parse(answer.text).one("svg", id="trend").all("circle")]
    assert len(titles) == 4 and titles[-1].endswith(": 6 count")
    assert set(dots(parse(answer.text).one("svg", id="trend"))[fleet[1][0]]) == set(jobs)


def test_a_trend_without_results_says_so(browser: Browser, schedule: dict[str, Any]) -> None:
    viewer, _ = browser("viewer")
    page = get(viewer, f"/schedules/{schedule['name']}/trend")
    assert "No results yet" in page.one("p", id="no-results").text
    assert not page.has("svg", id="trend")


def test_a_slot_that_cannot_fire_says_why(
    browser: Browser, client: TestClient, tokens: Tokens, sessions: sessionmaker[Session]
) -> None:
    nobody = f"none-{uuid.uuid4().hex[:6]}"  # a label no host carries
    made = make(client, tokens, nobody, interval_s=300)
    operator, csrf = browser("operator")
    url = f"/schedules/{made['name']}"
    done = operator.post(f"{url}/run", data={"csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303
    [fire] = fires(sessions, made["id"])
    assert fire.outcome == "failed" and fire.job_id is None and fire.reason
    slot = list(get(operator, url).one("table", id="fires").all("tr"))[1]
    cells = [td.text for td in slot.all("td")]
    assert cells[1] == "failed run now" and cells[2] == "—" and cells[4] == fire.reason
    listed = cells_of(row_of(get(operator, "/schedules"), made["name"]))
    assert listed[7].text == "failed"


def test_the_list_pages_by_fifty(
    browser: Browser, client: TestClient, tokens: Tokens, fleet: tuple[str, list[str]]
) -> None:
    for _ in range(51):
        make(client, tokens, fleet[0], interval_s=600)
    viewer, _ = browser("viewer")
    first = get(viewer, "/schedules")
    total = int(first.one("h1").one("span").text)
    assert (
        total >= 51 and len(having(first.one("table", id="schedules"), "tr", "data-schedule")) == 50
    )
    step = first.one("nav", cls="pager").one("a", rel="next").attrs["href"]
    assert step == "/schedules?offset=50"
    second = get(viewer, step)
    names = having(second.one("table", id="schedules"), "tr", "data-schedule")
    assert len(names) == min(50, total - 50)
    assert (
        second.one("nav", cls="pager").one("a", rel="prev").attrs["href"] == "/schedules?offset=0"
    )
