"""`GET /metrics` on the real app, database and Redis: access, format, hostile callers, outages.

The job-level behaviour (counts moved by a real job's runs, ingest lag) is in
test_metrics_e2e.py; `fleettrace serve` with its open port in test_metrics_serve.py.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from controller.app import create_app
from controller.db import make_engine, make_sessionmaker
from controller.hosts.models import Host
from controller.metrics import collector, streams, tally
from controller.metrics.collector import FleetCollector
from controller.metrics.http import UNMATCHED
from controller.schedules.models import ScheduleFire
from controller.schedules.scheduler import Scheduler
from controller.settings import Settings
from devstack import harness
from node_agent.wire import events_stream
from tests.controller.conftest import RecordingDispatcher, Tokens
from tests.controller.metrics_support import promtool_check, samples, total, value
from tests.controller.support import register_host

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def scrape(client: TestClient, tokens: Tokens, accept: str | None = None) -> str:
    headers = tokens.headers("viewer")
    if accept:
        headers["Accept"] = accept
    answer = client.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.text


@pytest.mark.parametrize(
    ("who", "status"),
    [("nobody", 401), ("revoked", 401), ("garbage", 401), ("viewer", 200), ("admin", 200)],
)
def test_metrics_need_a_viewer_token(
    client: TestClient, tokens: Tokens, who: str, status: int
) -> None:
    if who in ("viewer", "admin"):
        headers = tokens.headers(who)
    else:
        raw = {"nobody": None, "revoked": tokens.make("viewer", revoked=True), "garbage": "ft_x"}
        headers = {"Authorization": f"Bearer {raw[who]}"} if raw[who] else {}
    answer = client.get("/metrics", headers=headers)
    assert answer.status_code == status, answer.text
    if status == 401:
        assert answer.headers["content-type"].startswith("application/json")  # not a page
        assert "fleettrace_" not in answer.text


def test_a_scrape_passes_promtool_in_both_formats(client: TestClient, tokens: Tokens) -> None:
    client.get("/v1/hosts", headers=tokens.headers("viewer"))  # a request for the histogram
    text = scrape(client, tokens)
    checked = promtool_check(text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for name in (
        "fleettrace_build_info",
        "fleettrace_up",
        "fleettrace_jobs",
        "fleettrace_hosts",
        "fleettrace_ingest_lag_entries",
        "fleettrace_ingest_lag_seconds",
        "fleettrace_dispatch_accept_seconds_count",
        "fleettrace_first_snapshot_seconds_count",
        "fleettrace_http_request_duration_seconds_count",
        "fleettrace_db_pool_connections_in_use",
        "fleettrace_sse_streams_open",
        "fleettrace_ingest_dead_letters",
    ):
        assert any(s.name == name for s in samples(text)), name
    assert value(text, "fleettrace_up", {"source": "database"}) == 1
    assert value(text, "fleettrace_up", {"source": "redis"}) == 1

    answer = client.get("/metrics", headers={**tokens.headers("viewer"), "Accept": OPENMETRICS})
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert answer.text.endswith("# EOF\n")
    parsed = {f.name: f.type for f in openmetrics_families(answer.text)}  # a strict parser
    assert parsed["fleettrace_build"] == "info"
    assert parsed["fleettrace_http_request_duration_seconds"] == "histogram"
    assert "# TYPE fleettrace_schedule_fires counter" in answer.text


def test_latency_is_labelled_by_route_template_and_hostile_paths_add_no_series(
    client: TestClient, tokens: Tokens
) -> None:
    viewer = tokens.headers("viewer")
    for _ in range(3):
        client.get(f"/v1/jobs/{uuid.uuid4()}", headers=viewer)  # 404s, one template
    client.get("/v1/hosts", headers=viewer)
    before = scrape(client, tokens)
    routes_before = _series(before)
    assert ("/v1/jobs/{job_id}", "GET", "4xx") in routes_before
    assert ("/v1/hosts", "GET", "2xx") in routes_before
    hostile = [
        f"/v1/jobs/{uuid.uuid4()}",
        f"/no/such/{uuid.uuid4()}",
        f"/v1/{'x' * 2000}",
        "/v1/hosts/%2e%2e%2fetc%2fpasswd",
        f"/static/{uuid.uuid4()}.js",
        "/v1/jobs/%E2%80%AE%00evil",
    ]
    for path in hostile * 5:
        client.get(path, headers=viewer)
    for method in ("PROPFIND", "BREW", "X" * 200):
        client.request(method, f"/v1/jobs/{uuid.uuid4()}", headers=viewer)
    after = scrape(client, tokens)
    routes_after = _series(after)
    # Only known templates, the one "unmatched" and the one "other" method: however many paths.
    app: FastAPI = client.app  # type: ignore[assignment]
    app_routes = {getattr(r, "path", None) for r in app.routes} | set(app.openapi()["paths"])
    assert {route for route, _, _ in routes_after} <= app_routes | {UNMATCHED}
    assert {method for _, method, _ in routes_after} <= {"GET", "POST", "other", "HEAD"}
    new = routes_after - routes_before
    assert len(new) <= 6, new
    assert not any("evil" in line or "passwd" in line for line in after.splitlines())


def _series(text: str) -> set[tuple[str, str, str]]:
    return {
        (s.labels["route"], s.labels["method"], s.labels["status_class"])
        for s in samples(text)
        if s.name == "fleettrace_http_request_duration_seconds_count"
    }


def test_fifty_concurrent_scrapes_read_the_sources_a_few_times_and_the_api_answers(
    app: FastAPI, client: TestClient, tokens: Tokens
) -> None:
    fleet: FleetCollector = app.state.metrics.fleet
    headers = tokens.headers("viewer")
    reads = fleet.reads

    def one(i: int) -> int:
        path = "/metrics" if i % 5 else "/v1/hosts"  # the API keeps answering meanwhile
        return client.get(path, headers=headers).status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(one, range(60)))
    assert statuses == [200] * 60
    # Shared, not read once per scrape: at most one read per second of the burst.
    assert fleet.reads - reads < 48, fleet.reads - reads


def test_redis_away_the_scrape_still_answers_and_says_so(
    settings: Settings,
    engine: Engine,
    dispatcher: RecordingDispatcher,
    tokens: Tokens,
    tmp_path: Path,
) -> None:
    away = settings.model_copy(update={"redis_url": f"unix://{tmp_path / 'no-redis.sock'}"})
    app = create_app(away, dispatcher)
    try:
        with TestClient(app) as client:
            for _ in range(2):
                text = scrape(client, tokens)
                app.state.metrics.fleet.ttl_s = 0  # the second scrape reads again
        assert value(text, "fleettrace_up", {"source": "redis"}) == 0
        assert value(text, "fleettrace_up", {"source": "database"}) == 1
        assert total(text, "fleettrace_scrape_errors_total", {"source": "redis"}) == 2
        assert value(text, "fleettrace_jobs", {"state": "succeeded"}) is not None
        # Redis' families are left out, not shown as zeros.
        assert value(text, "fleettrace_ingest_lag_entries") is None
        assert value(text, "fleettrace_schedule_fires_total") is None
        checked = promtool_check(text)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        app.state.engine.dispose()


def test_database_away_the_fleet_collector_leaves_its_families_out(redis_url: str) -> None:
    # A PostgreSQL that is not there (nothing listens on that socket).
    engine = make_engine("postgresql+psycopg://postgres@/none?host=/nonexistent&port=1")
    collector = FleetCollector(
        sessions=make_sessionmaker(engine),
        redis_url=redis_url,
        heartbeat_timeout_s=30,
        ingest_group="controller",
    )
    try:
        found = {m.name: m for m in collector.collect()}
    finally:
        collector.close()
        engine.dispose()
    up = {s.labels["source"]: s.value for s in found["fleettrace_up"].samples}
    # The agents' families are read from the database too.
    assert up == {"database": 0, "redis": 1, "agents": 0}
    assert "fleettrace_jobs" not in found and "fleettrace_runs" not in found
    assert "fleettrace_ingest_lag_entries" in found


def test_lag_counts_unread_and_pending_entries_and_ages_the_oldest(
    redis_client: redis.Redis,
) -> None:
    """On the real Redis: a stream with three entries from 30, 20 and 10 s ago."""
    stream, group = events_stream("lag-probe"), "lag-probe-group"
    redis_client.xgroup_create(stream, group, id="0", mkstream=True)
    now_ms = int(time.time() * 1000)
    for age_s in (30, 20, 10):
        redis_client.xadd(stream, {"data": b"{}"}, id=f"{now_ms - 1000 * age_s}-0")

    def read() -> dict[str, float]:
        found = {m.name: m.samples[0].value for m in streams.families(redis_client, group=group)}
        return {k.removeprefix("fleettrace_ingest_"): v for k, v in found.items()}

    try:
        first = read()
        assert (first["lag_entries"], first["pending_entries"]) == (3, 0)
        assert 30 <= first["lag_seconds"] < 40
        redis_client.xreadgroup(group, "c1", {stream: ">"}, count=1)
        held = read()
        assert (held["lag_entries"], held["pending_entries"]) == (2, 1)
        assert 30 <= held["lag_seconds"] < 40  # the pending one is still the oldest
        (entry,) = redis_client.xrange(stream, count=1)
        redis_client.xack(stream, group, entry[0])
        acked = read()
        assert (acked["lag_entries"], acked["pending_entries"]) == (2, 0)
        assert 20 <= acked["lag_seconds"] < 30
        redis_client.xreadgroup(group, "c1", {stream: ">"})
        for entry_id, _ in redis_client.xrange(stream):
            redis_client.xack(stream, group, entry_id)
        done = read()
        assert (done["lag_entries"], done["pending_entries"], done["lag_seconds"]) == (0, 0, 0)
        assert done["stream_entries"] >= 3 and done["streams"] >= 1
    finally:
        redis_client.delete(stream)


def test_schedule_fires_and_misfires_count_each_recorded_slot_once(
    app: FastAPI,
    settings: Settings,
    sessions: sessionmaker[Session],
    dispatcher: RecordingDispatcher,
    client: TestClient,
    tokens: Tokens,
) -> None:
    """The real scheduler (on a clock of the test's) and the real dispatcher: the counter
    moves by exactly the slots the scheduler recorded, per outcome."""
    app.state.metrics.fleet.ttl_s = 0
    label = f"metrics-{uuid.uuid4().hex[:6]}"
    register_host(client, tokens.headers("admin"), f"{label}-1", role=label)
    template = {"program": "syscalls", "duration_s": 2, "targets": {"selector": {"role": label}}}
    answer = client.post(
        "/v1/schedules",
        json={"name": label, "interval_s": 60, "misfire_grace_s": 10, "template": template},
        headers=tokens.headers("operator"),
    )
    assert answer.status_code == 201, answer.text
    created = answer.json()
    start = datetime.fromisoformat(created["next_fire_at"].replace("Z", "+00:00"))
    outcomes = ("fired", "skipped_overlap", "skipped_misfire")
    before = {o: _fires(scrape(client, tokens), o) for o in outcomes}
    now = [start]
    scheduler = Scheduler(settings, sessions, dispatcher, clock=lambda: now[0])
    scheduler.step()  # fires slot 0
    now[0] = start + timedelta(seconds=61)
    scheduler.step()  # slot 1: the first job still runs (overlap)
    now[0] = start + timedelta(seconds=5 * 60 + 3)
    scheduler.step()  # slots 2-4 missed their grace, slot 5 is blocked by slot 0's job again
    with sessions() as session:
        rows = session.scalars(
            select(ScheduleFire.outcome).where(ScheduleFire.schedule_id == created["id"])
        ).all()
    recorded = {o: rows.count(o) for o in outcomes}
    assert recorded["skipped_misfire"] == 3 and recorded["fired"] == 1, rows
    after = scrape(client, tokens)
    assert {o: _fires(after, o) - before[o] for o in outcomes} == recorded


def _fires(text: str, outcome: str) -> float:
    return total(text, "fleettrace_schedule_fires_total", {"outcome": outcome})


def test_the_agents_families_join_the_scrape_and_their_failure_is_theirs_alone(
    app: FastAPI, client: TestClient, tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where controller/hosts/agent_metrics.py is (lane m2's), its families are called with a
    session of the scrape's; here a stand-in of the same signature reads the real hosts."""
    app.state.metrics.fleet.ttl_s = 0

    def per_host(session: Session) -> list[Metric]:
        loaded = GaugeMetricFamily(
            "fleettrace_agent_programs_loaded", "Traces running now.", labels=("host",)
        )
        for name in session.scalars(select(Host.name)):
            loaded.add_metric([name], 0)
        return [loaded]

    def broken(session: Session) -> list[Metric]:
        raise ValueError("a stored agent_stats the code cannot read")

    register_host(client, tokens.headers("admin"), f"agent-{uuid.uuid4().hex[:6]}")
    monkeypatch.setattr(collector, "agent_families", per_host)
    text = scrape(client, tokens)
    assert value(text, "fleettrace_up", {"source": "agents"}) == 1
    assert total(text, "fleettrace_agent_programs_loaded") == 0
    assert value(text, "fleettrace_agent_programs_loaded") is not None
    monkeypatch.setattr(collector, "agent_families", broken)
    text = scrape(client, tokens)
    assert value(text, "fleettrace_up", {"source": "agents"}) == 0
    assert value(text, "fleettrace_up", {"source": "database"}) == 1
    assert value(text, "fleettrace_agent_programs_loaded") is None
    assert total(text, "fleettrace_scrape_errors_total", {"source": "agents"}) >= 1


def test_a_redis_that_dies_and_comes_back(
    settings: Settings,
    engine: Engine,
    dispatcher: RecordingDispatcher,
    tokens: Tokens,
    tmp_path: Path,
) -> None:
    """A private redis-server, SIGKILLed between scrapes and started again: each scrape
    answers, saying whether Redis was read; a count noted while it is down is lost, and the
    commit that noted it goes through."""
    server = harness.RedisServer(tmp_path, aof=True)
    server.start()
    app = create_app(settings.model_copy(update={"redis_url": server.url}), dispatcher)
    app.state.metrics.fleet.ttl_s = 0
    noting = make_sessionmaker(engine)
    tally.attach(noting, server.url)

    def note_a_fire() -> None:
        with noting() as session:
            tally.count(session, "schedule_fires", "failed")
            session.commit()

    try:
        with TestClient(app) as client:
            note_a_fire()
            text = scrape(client, tokens)
            assert value(text, "fleettrace_up", {"source": "redis"}) == 1
            assert _fires(text, "failed") == 1
            server.kill()
            note_a_fire()  # no exception: the work's commit does not wait for metrics
            text = scrape(client, tokens)
            assert value(text, "fleettrace_up", {"source": "redis"}) == 0
            assert value(text, "fleettrace_jobs", {"state": "pending"}) is not None
            server.start()
            note_a_fire()
            text = scrape(client, tokens)
            assert value(text, "fleettrace_up", {"source": "redis"}) == 1
            assert _fires(text, "failed") == 2  # the AOF kept the first; the second was lost
    finally:
        app.state.metrics.close()
        app.state.engine.dispose()
        server.stop()
