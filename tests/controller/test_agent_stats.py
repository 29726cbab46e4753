"""An agent's own stats through the real stream, ingest and database (SQLite and PostgreSQL):
stored and shown when sane, bounded or dropped when hostile, and never at the cost of the
heartbeat that keeps the host online; old agents without stats keep working."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from alembic import command
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, inspect
from sqlalchemy.orm import Session, sessionmaker

from controller.migrate import alembic_config
from node_agent.bounds import MAX_BYTES
from node_agent.wire import events_stream
from tests.controller.conftest import Cli, Feeder, Tokens
from tests.controller.console.conftest import sign_in
from tests.controller.metrics_support import promtool_check
from tests.controller.support import agent_exposition, agent_samples, register_host

STARTED = datetime.now(timezone.utc) - timedelta(hours=1)
SANE: dict[str, Any] = {
    "rss_bytes": 150 * 2**20,
    "pss_bytes": 90 * 2**20,
    "cpu_seconds_total": 36.0,
    "programs_loaded": 1,
    "traces_run_total": 12,
    "traces_failed_total": 3,
    "last_error": "run r-12: policy: custom programs are not allowed on this host",
    "last_error_at": (STARTED + timedelta(minutes=30)).isoformat(),
    "started_at": STARTED.isoformat(),
}


@pytest.fixture(scope="module")
def database_url(db_url: str) -> str:
    return db_url


def new_host(client: TestClient, tokens: Tokens) -> str:
    name = f"stats-{uuid.uuid4().hex[:8]}"
    register_host(client, tokens.headers("admin"), name)
    return name


def beat(feeder: Feeder, host: str, agent: Any = None, *, with_agent: bool = True) -> None:
    """A heartbeat as raw JSON on the host's stream (as a hostile agent may write it)."""
    event: dict[str, Any] = {"type": "heartbeat", "host": host, "agent_version": "0.1.0"}
    if with_agent:
        event["agent"] = agent
    data = json.dumps({"host": host, "event": event})  # NaN and Infinity as JSON's extensions
    feeder.ingest.redis.xadd(events_stream(host), {"data": data})
    feeder.drain()


@pytest.fixture
def hosts_show(
    client: TestClient, tokens: Tokens, cli_for: Callable[[TestClient, str], Cli]
) -> Callable[[str], str]:
    """`fleettrace hosts show NAME` as a viewer: what it prints (it must exit 0)."""
    cli = cli_for(client, tokens.token("viewer"))

    def show(name: str) -> str:
        code, out, err = cli("hosts", "show", name)
        assert code == 0, err
        return out

    return show


def shown(client: TestClient, tokens: Tokens, host: str) -> dict[str, Any]:
    answer = client.get(f"/v1/hosts/{host}", headers=tokens.headers("viewer"))
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_sane_stats_are_stored_shown_by_the_api_and_the_cli_and_exported(
    client: TestClient,
    tokens: Tokens,
    feeder: Feeder,
    sessions: sessionmaker[Session],
    hosts_show: Callable[[str], str],
) -> None:
    host = new_host(client, tokens)
    beat(feeder, host, SANE)
    body = shown(client, tokens, host)
    assert body["state"] == "online"
    stats = body["agent_stats"]
    assert {k: stats[k] for k in ("rss_bytes", "traces_run_total", "traces_failed_total")} == {
        "rss_bytes": SANE["rss_bytes"],
        "traces_run_total": 12,
        "traces_failed_total": 3,
    }
    assert stats["last_error"] == SANE["last_error"]

    out = hosts_show(host)
    assert "150.0 MiB resident, 90.0 MiB proportional" in out
    # 36 s of CPU over the hour since STARTED (plus however long the suite took to get here)
    pct = re.search(r"36\.00 s \((\d+\.\d\d) % of one CPU since start\)", out)
    assert pct is not None and 0.5 <= float(pct.group(1)) <= 1.0, out
    assert "1 running; 12 run, 3 failed" in out
    assert "run r-12: policy: custom programs are not allowed" in out

    samples = agent_samples(sessions)
    assert samples[("fleettrace_agent_resident_memory_bytes", host)] == SANE["rss_bytes"]
    assert samples[("fleettrace_agent_proportional_memory_bytes", host)] == SANE["pss_bytes"]
    assert samples[("fleettrace_agent_cpu_seconds_total", host)] == 36.0
    assert samples[("fleettrace_agent_programs_loaded", host)] == 1
    assert samples[("fleettrace_agent_traces_run_total", host)] == 12
    assert samples[("fleettrace_agent_traces_failed_total", host)] == 3
    error_at = datetime.fromisoformat(SANE["last_error_at"]).timestamp()
    assert samples[("fleettrace_agent_last_error_timestamp_seconds", host)] == error_at
    beat_at = datetime.fromisoformat(body["last_heartbeat"]).timestamp()
    assert samples[("fleettrace_agent_last_heartbeat_timestamp_seconds", host)] == beat_at


def test_the_families_pass_promtool_check_metrics(
    client: TestClient, tokens: Tokens, feeder: Feeder, sessions: sessionmaker[Session]
) -> None:
    beat(feeder, new_host(client, tokens), SANE)
    beat(feeder, new_host(client, tokens), with_agent=False)
    text = agent_exposition(sessions)
    assert "fleettrace_agent_cpu_seconds_total{" in text
    checked = promtool_check(text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == "", checked.stdout + checked.stderr


def test_an_old_agent_without_stats_is_online_shown_as_such_and_only_its_beat_exported(
    client: TestClient,
    tokens: Tokens,
    feeder: Feeder,
    sessions: sessionmaker[Session],
    hosts_show: Callable[[str], str],
) -> None:
    host = new_host(client, tokens)
    beat(feeder, host, with_agent=False)
    body = shown(client, tokens, host)
    assert body["state"] == "online" and body["agent_stats"] is None
    out = hosts_show(host)
    assert "agent stats:" in out and "not reported" in out
    exported = {name for name, h in agent_samples(sessions) if h == host}
    assert exported == {"fleettrace_agent_last_heartbeat_timestamp_seconds"}


def test_stats_of_a_later_beat_without_them_are_not_kept_stale(
    client: TestClient, tokens: Tokens, feeder: Feeder
) -> None:
    host = new_host(client, tokens)
    beat(feeder, host, SANE)
    assert shown(client, tokens, host)["agent_stats"] is not None
    beat(feeder, host, with_agent=False)  # the agent was downgraded
    assert shown(client, tokens, host)["agent_stats"] is None


REFUSED: list[tuple[str, dict[str, Any] | str, str]] = [
    ("memory past 1 PiB", {**SANE, "rss_bytes": MAX_BYTES + 1}, "agent.rss_bytes"),
    ("a number past any integer column", {**SANE, "traces_run_total": 10**30}, "traces_run_total"),
    ("negative memory", {**SANE, "pss_bytes": -1}, "agent.pss_bytes"),
    ("negative cpu", {**SANE, "cpu_seconds_total": -0.5}, "agent.cpu_seconds_total"),
    ("NaN cpu", {**SANE, "cpu_seconds_total": float("nan")}, "agent.cpu_seconds_total"),
    ("infinite cpu", {**SANE, "cpu_seconds_total": float("inf")}, "agent.cpu_seconds_total"),
    ("more failed than run", {**SANE, "traces_failed_total": 13}, "exceeds traces_run_total"),
    ("programs past the running bound", {**SANE, "programs_loaded": 10**6}, "programs_loaded"),
    ("a time with no UTC", {**SANE, "started_at": "9999-12-31T23:00:00-05:00"}, "started_at"),
    ("a time before 1970", {**SANE, "last_error_at": "1900-01-01T00:00:00Z"}, "last_error_at"),
    ("a field nobody knows", {**SANE, "hidden": 1}, "agent.hidden"),
    ("not an object", "lots of memory", "agent"),
]


@pytest.mark.parametrize(
    ("agent", "why"), [(a, w) for _, a, w in REFUSED], ids=[name for name, _, _ in REFUSED]
)
def test_hostile_stats_are_dropped_the_heartbeat_is_kept_and_the_host_named_in_the_log(
    client: TestClient,
    tokens: Tokens,
    feeder: Feeder,
    sessions: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
    agent: dict[str, Any] | str,
    why: str,
) -> None:
    host = new_host(client, tokens)
    beat(feeder, host, SANE)
    first = shown(client, tokens, host)["last_heartbeat"]
    with caplog.at_level(logging.WARNING, logger="controller.ingest.consumer"):
        beat(feeder, host, agent)
    body = shown(client, tokens, host)
    assert body["state"] == "online" and body["last_heartbeat"] > first  # liveness kept
    assert body["agent_stats"] is None  # not the earlier beat's, shown as current
    logged = [r.getMessage() for r in caplog.records if host in r.getMessage()]
    assert len(logged) == 1 and why in logged[0] and "heartbeat kept" in logged[0], logged
    exported = {name for name, h in agent_samples(sessions) if h == host}
    assert exported == {"fleettrace_agent_last_heartbeat_timestamp_seconds"}
    with caplog.at_level(logging.WARNING, logger="controller.ingest.consumer"):
        beat(feeder, host, agent)  # the same again: not logged again
    assert len([r for r in caplog.records if host in r.getMessage()]) == 1


CLIPPED: list[tuple[str, str, Callable[[str], bool]]] = [
    (
        "terminal escapes and a newline",
        "\x1b]0;PWNED\x07\x1b[2J\nsecond line",
        lambda s: s == "\\x1b]0;PWNED\\x07\\x1b[2J\\nsecond line",
    ),
    ("1 MB", "A" * 1_000_000, lambda s: len(s) == 500 and s.endswith(" [... cut]")),
    ("bidi override", "run \u202eexe.lave", lambda s: s == "run \\u202eexe.lave"),
]


@pytest.mark.parametrize(
    ("error", "stored"), [(e, s) for _, e, s in CLIPPED], ids=[name for name, _, _ in CLIPPED]
)
def test_a_hostile_last_error_is_stored_one_printable_bounded_line(
    client: TestClient,
    tokens: Tokens,
    feeder: Feeder,
    hosts_show: Callable[[str], str],
    error: str,
    stored: Callable[[str], bool],
) -> None:
    host = new_host(client, tokens)
    beat(feeder, host, {**SANE, "last_error": error})
    kept = shown(client, tokens, host)["agent_stats"]["last_error"]
    assert stored(kept), kept[:200]
    out = hosts_show(host)
    assert "\x1b" not in out and "\u202e" not in out
    assert len(max(out.splitlines(), key=len)) < 700


def test_the_console_host_page_shows_the_stats_escaped(
    app: FastAPI, client: TestClient, tokens: Tokens, feeder: Feeder
) -> None:
    host = new_host(client, tokens)
    beat(feeder, host, {**SANE, "last_error": "<script>alert(1)</script> & more"})
    with TestClient(app, base_url="http://testserver") as browser:
        sign_in(browser, tokens.token("viewer"))
        page = browser.get(f"/hosts/{host}")
    assert page.status_code == 200, page.text
    html = page.text
    assert 'data-agent="agent memory"' in html and "150.0 MiB resident" in html
    assert "1 running; 12 run, 3 failed" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html
    assert "<script>alert" not in html


def test_migration_0010_goes_down_and_up_again(engine: Engine, database_url: str) -> None:
    def columns() -> set[str]:
        return {c["name"] for c in inspect(engine).get_columns("hosts")}

    config = alembic_config(database_url)
    assert "agent_stats" in columns()
    command.downgrade(config, "0009")
    engine.dispose()
    assert "agent_stats" not in columns()
    command.upgrade(config, "head")
    engine.dispose()
    assert "agent_stats" in columns()
