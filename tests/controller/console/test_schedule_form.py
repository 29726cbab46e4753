"""Making and editing schedules through the console's form, on the real database: each error
beside the field the API names, with the visitor's values kept."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.schedules.models import Schedule
from tests.controller.conftest import Tokens
from tests.controller.console.dom import Node, parse
from tests.controller.support import register_host
from tests.controller.test_schedules import make

Browser = Callable[[str], tuple[TestClient, str]]


@pytest.fixture(scope="module")
def role(client: TestClient, tokens: Tokens) -> str:
    value = f"form-{uuid.uuid4().hex[:6]}"
    register_host(client, tokens.headers("admin"), f"{value}-1", role=value)
    return value


def form(role: str, **change: str | None) -> dict[str, str]:
    """A good new-schedule form (an interval, a selector), fields changed or (None) left out."""
    fields = {
        "name": f"f-{uuid.uuid4().hex[:8]}",
        "cron": "",
        "time_zone": "UTC",
        "interval": "5m",
        "misfire_grace": "1m",
        "enabled": "on",
        "program": "syscalls",
        "params.per_process": "true",
        "targets": "selector",
        "targets.selector": f"role={role}",
        "targets.names": "",
        "duration": "2s",
    }
    fields.update(change)  # type: ignore[arg-type]
    return {k: v for k, v in fields.items() if v is not None}


def by_name(sessions: sessionmaker[Session], name: str) -> Schedule | None:
    with sessions() as session:
        return session.scalar(select(Schedule).where(Schedule.name == name))


def post(client: TestClient, url: str, csrf: str, fields: dict[str, str]) -> Any:
    return client.post(url, data={**fields, "csrf": csrf}, follow_redirects=False)


def value_of(page: Node, ident: str) -> str:
    return page.one(id=ident).attrs.get("value", "")


def test_the_new_form_has_the_fields_the_browser_tests_use(browser: Browser) -> None:
    operator, csrf = browser("operator")
    page = parse(operator.get("/schedules/new").text)
    form_ = page.one("form", id="schedule-form")
    assert form_.attrs["action"] == "/schedules/new" and form_.attrs["method"] == "post"
    for ident in ("schedule-name", "cron", "time_zone", "schedule-interval", "program", "duration"):
        assert form_.one(id=ident)
    assert value_of(page, "time_zone") == "UTC"
    assert form_.one("button", id="submit-schedule").attrs["type"] == "submit"
    assert len(list(form_.all("input", name="interval"))) == 1 and not form_.has(id="interval")
    assert form_.one("input", name="csrf").attrs["value"] == csrf
    assert "Europe/Berlin" in {o.attrs["value"] for o in page.one("datalist").all("option")}


def test_create_by_interval(browser: Browser, role: str, sessions: sessionmaker[Session]) -> None:
    operator, csrf = browser("operator")
    fields = form(role, **{"retention.max_runs": "20", "retention.max_age": "7d"})
    done = post(operator, "/schedules/new", csrf, fields)
    assert done.status_code == 303, done.text[:2000]
    assert done.headers["location"] == f"/schedules/{fields['name']}"
    made = by_name(sessions, fields["name"])
    assert made is not None
    assert (made.interval_s, made.cron, made.enabled, made.continuous) == (300, None, True, False)
    assert (made.max_runs, made.max_age_s, made.misfire_grace_s) == (20, 7 * 86400, 60)
    assert made.template["program"] == "syscalls" and made.template["duration_s"] == 2
    assert made.template["targets"]["selector"] == {"role": role}
    assert made.template["params"] == {"per_process": True}
    assert "interval_s" not in made.template  # the schedule's interval is not the job's
    assert made.created_by == "test-operator" and made.next_fire_at is not None
    page = parse(operator.get(done.headers["location"]).text)
    assert next(page.one("table", id="timing").all("td")).text == "every 5 min"


def test_create_by_cron_in_a_time_zone(
    browser: Browser, role: str, sessions: sessionmaker[Session]
) -> None:
    operator, csrf = browser("operator")
    fields = form(role, cron="30 2 * * *", time_zone="Europe/Berlin", interval="")
    fields.pop("enabled")  # made paused
    done = post(operator, "/schedules/new", csrf, fields)
    assert done.status_code == 303, done.text[:2000]
    made = by_name(sessions, fields["name"])
    assert made is not None
    assert (made.cron, made.timezone, made.interval_s) == ("30 2 * * *", "Europe/Berlin", None)
    assert not made.enabled and made.next_fire_at is None
    done = post(operator, f"/schedules/{fields['name']}/resume", csrf, {})
    made = by_name(sessions, fields["name"])
    assert made is not None and made.next_fire_at is not None
    local = made.next_fire_at.replace(tzinfo=timezone.utc).astimezone(ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute) == (2, 30)
    assert made.next_fire_at.replace(tzinfo=timezone.utc) > datetime.now(timezone.utc)


def test_a_continuous_schedule(
    browser: Browser, role: str, sessions: sessionmaker[Session]
) -> None:
    operator, csrf = browser("operator")
    fields = form(role, interval="10s", duration="1m", continuous="on")
    assert post(operator, "/schedules/new", csrf, fields).status_code == 303
    made = by_name(sessions, fields["name"])
    assert made is not None and made.continuous and made.template["interval_s"] == 10


ERRORS = {
    "bad cron": ({"cron": "61 * * * *", "interval": ""}, "cron", "bad cron expression"),
    "cron in words": ({"cron": "every hour", "interval": ""}, "cron", "bad cron expression"),
    "unknown time zone": (
        {"cron": "0 3 * * *", "interval": "", "time_zone": "Nowhere/Land"},
        "time_zone",
        "unknown time zone 'Nowhere/Land'",
    ),
    "interval below minimum": ({"interval": "500ms"}, "interval_s", "greater than or equal to 1"),
    "interval not a duration": ({"interval": "soon"}, "interval_s", "bad duration 'soon'"),
    "cron and interval": ({"cron": "0 3 * * *"}, "cron", "give exactly one of cron or interval_s"),
    "neither": ({"interval": ""}, "cron", "give exactly one of cron or interval_s"),
    "bad name": ({"name": "<b>x"}, "name", "should match pattern"),
    "bad parameter": ({"params.per_process": "maybe"}, "params.per_process", "expected bool"),
    "zero duration": ({"duration": "0"}, "duration_s", "greater than 0"),
    "bad selector": ({"targets.selector": "role"}, "targets.selector", "want k=v"),
    "no retention": ({"retention.max_runs": "0"}, "retention.max_runs", "greater than or equal"),
    "bad grace": ({"misfire_grace": "-1s"}, "misfire_grace_s", "bad duration"),
    "continuous by cron": (
        {"cron": "0 3 * * *", "interval": "", "continuous": "on"},
        "cron",
        "a continuous schedule needs interval_s",
    ),
    "continuous horizon too short": (
        {"interval": "10s", "duration": "15s", "continuous": "on"},
        "duration_s",
        "must hold at least two intervals",
    ),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_each_error_is_beside_its_field_with_the_values_kept(
    browser: Browser, role: str, sessions: sessionmaker[Session], case: str
) -> None:
    change, field, message = ERRORS[case]
    operator, csrf = browser("operator")
    fields = form(role, **change)
    answer = post(operator, "/schedules/new", csrf, fields)
    assert answer.status_code == 422, answer.text[:500]
    page = parse(answer.text)
    said = list(page.all("p", cls="field-error"))
    assert [p.attrs["data-field"] for p in said] == [field], [p.text for p in said]
    assert message in said[0].text
    for ident, name in [("schedule-name", "name"), ("cron", "cron"), ("time_zone", "time_zone")]:
        assert value_of(page, ident) == fields[name]
    assert value_of(page, "schedule-interval") == fields["interval"]
    assert value_of(page, "targets-selector") == fields["targets.selector"]
    assert value_of(page, "duration") == fields["duration"]
    assert by_name(sessions, fields["name"]) is None
    assert "<b>x" not in answer.text  # the hostile name comes back escaped


def test_a_taken_name_is_a_conflict_on_the_name(browser: Browser, role: str) -> None:
    operator, csrf = browser("operator")
    fields = form(role)
    assert post(operator, "/schedules/new", csrf, fields).status_code == 303
    again = post(operator, "/schedules/new", csrf, form(role, name=fields["name"]))
    assert again.status_code == 409
    error = parse(again.text).one("p", cls="field-error")
    assert error.attrs["data-field"] == "name" and "exists" in error.text


def test_edit_changes_the_stored_schedule(
    browser: Browser, role: str, sessions: sessionmaker[Session]
) -> None:
    operator, csrf = browser("operator")
    fields = form(role, interval="90s", **{"params.per_process": "false"})
    assert post(operator, "/schedules/new", csrf, fields).status_code == 303
    url = f"/schedules/{fields['name']}/edit"
    page = parse(operator.get(url).text)
    assert page.one("form", id="schedule-form").attrs["action"] == url
    assert value_of(page, "schedule-interval") == "90s" and value_of(page, "cron") == ""
    assert value_of(page, "targets-selector") == f"role={role}"
    assert value_of(page, "duration") == "2s"
    assert "disabled" in page.one(id="schedule-name").attrs

    bad = post(operator, url, csrf, form(role, cron="0 25 * * *", interval="", duration="3s"))
    assert bad.status_code == 422
    shown = parse(bad.text)
    assert shown.one("p", cls="field-error").attrs["data-field"] == "cron"
    assert value_of(shown, "cron") == "0 25 * * *" and value_of(shown, "duration") == "3s"
    kept = by_name(sessions, fields["name"])
    assert kept is not None and kept.interval_s == 90 and kept.template["duration_s"] == 2

    change = form(role, cron="15 4 * * *", interval="", duration="3s", time_zone="Asia/Tokyo")
    change |= {"retention.max_runs": "5", "allow_overlap": "on"}
    done = post(operator, url, csrf, change)
    assert done.status_code == 303 and done.headers["location"] == f"/schedules/{fields['name']}"
    made = by_name(sessions, fields["name"])
    assert made is not None
    assert (made.cron, made.timezone, made.interval_s) == ("15 4 * * *", "Asia/Tokyo", None)
    assert (made.max_runs, made.allow_overlap, made.template["duration_s"]) == (5, True, 3)


def test_a_viewer_gets_no_form(browser: Browser, role: str) -> None:
    viewer, csrf = browser("viewer")
    assert viewer.get("/schedules/new").status_code == 403
    refused = post(viewer, "/schedules/new", csrf, form(role))
    assert refused.status_code == 403 and "operator" in refused.text


def test_edit_keeps_a_templates_snapshot_interval_the_form_does_not_show(
    browser: Browser, client: TestClient, tokens: Tokens, role: str, sessions: sessionmaker[Session]
) -> None:
    template = {
        "program": "syscalls",
        "duration_s": 4,
        "interval_s": 1,
        "targets": {"selector": {"role": role}},
    }
    made = make(client, tokens, role, interval_s=120, template=template)
    operator, csrf = browser("operator")
    url = f"/schedules/{made['name']}/edit"
    assert value_of(parse(operator.get(url).text), "schedule-interval") == "2m"
    done = post(operator, url, csrf, form(role, interval="3m", duration="4s", misfire_grace=""))
    assert done.status_code == 303, done.text[:2000]
    stored = by_name(sessions, made["name"])
    assert stored is not None and stored.interval_s == 180
    assert (stored.template["interval_s"], stored.misfire_grace_s) == (1, 60)
