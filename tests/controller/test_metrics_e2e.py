"""/metrics after real work: real agents (bcc), Celery on a real Redis, the real ingest.

A job's runs move the families by exactly its runs; ingest's lag grows while ingest is stopped
(the agents' heartbeats pile up on their streams) and falls back once it runs again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.controller.conftest import Agents, IngestThread, Tokens
from tests.controller.metrics_support import promtool_check, total, value
from tests.controller.support import job_final, submit, wait_for, wait_job

pytestmark = pytest.mark.bcc

HOSTS = ("metrics-a", "metrics-b")


@pytest.fixture(scope="module")
def fleet(agent: Agents, app: FastAPI) -> dict[str, Any]:
    app.state.metrics.fleet.ttl_s = 0  # every scrape reads: the test compares scrapes
    return agent.start_all(HOSTS)


@pytest.fixture
def cgroups(make_cgroup: Callable[[str], Path]) -> dict[str, Path]:
    return {host: make_cgroup(host) for host in HOSTS}


@pytest.fixture
def scrape(client: TestClient, tokens: Tokens) -> Iterator[Callable[[], str]]:
    def get() -> str:
        answer = client.get("/metrics", headers=tokens.headers("viewer"))
        assert answer.status_code == 200, answer.text
        return answer.text

    yield get


COUNTS = {
    "succeeded syscalls runs": ("fleettrace_runs", {"state": "succeeded", "program": "syscalls"}),
    "syscalls runs": ("fleettrace_runs", {"program": "syscalls"}),
    "succeeded jobs": ("fleettrace_jobs", {"state": "succeeded"}),
    "dispatch accepted": ("fleettrace_dispatch_accept_seconds_count", {}),
    "dispatch accepted (+Inf)": ("fleettrace_dispatch_accept_seconds_bucket", {"le": "+Inf"}),
    "first snapshots": ("fleettrace_first_snapshot_seconds_count", {}),
}


def counts(text: str) -> dict[str, float]:
    return {what: total(text, name, labels) for what, (name, labels) in COUNTS.items()}


def test_a_jobs_runs_move_the_counts_by_exactly_its_runs(
    fleet: dict[str, Any],
    cgroups: dict[str, Path],
    client: TestClient,
    tokens: Tokens,
    scrape: Callable[[], str],
) -> None:
    before = counts(scrape())
    job = submit(
        client,
        tokens.headers("operator"),
        program="syscalls",
        duration_s=2,
        targets={"hosts": list(HOSTS)},
    )
    done = wait_job(client, tokens.headers("viewer"), job["id"], job_final, 60, "the job")
    assert done["state"] == "succeeded", done
    expected = {
        "succeeded syscalls runs": 2,
        "syscalls runs": 2,
        "succeeded jobs": 1,
        "dispatch accepted": 2,
        "dispatch accepted (+Inf)": 2,
        "first snapshots": 2,
    }

    def moved() -> dict[str, float] | None:
        now = counts(scrape())
        diff = {what: now[what] - before[what] for what in now}
        return diff if diff == expected else None

    try:
        wait_for(moved, 10, "the counts to move by the job's runs", 0.1)
    except TimeoutError:
        now = counts(scrape())
        raise AssertionError({what: now[what] - before[what] for what in now}) from None
    text = scrape()
    assert value(text, "fleettrace_hosts", {"state": "online"}) == len(HOSTS)
    # Seconds, not milliseconds: a local dispatch is accepted well within a minute.
    accepted = total(text, "fleettrace_dispatch_accept_seconds_sum")
    assert 0 < accepted < 60 * total(text, "fleettrace_dispatch_accept_seconds_count")
    checked = promtool_check(text)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_ingest_lag_rises_while_ingest_is_stopped_and_falls_after(
    fleet: dict[str, Any], ingest: IngestThread, scrape: Callable[[], str]
) -> None:
    group = {"group": "controller"}

    def lag() -> tuple[float, float, float]:
        text = scrape()
        return (
            value(text, "fleettrace_ingest_lag_entries", group) or 0,
            value(text, "fleettrace_ingest_lag_seconds", group) or 0,
            value(text, "fleettrace_ingest_pending_entries", group) or 0,
        )

    def lag_when(ok: Callable[[tuple[float, float, float]], bool]) -> Callable[[], Any]:
        def check() -> tuple[float, float, float] | None:
            found = lag()
            return found if ok(found) else None

        return check

    wait_for(lag_when(lambda f: f[0] == 0), 10, "ingest to be caught up")
    ingest.stop()
    try:
        # The agents heartbeat every 0.5 s: their beats pile up, unread.
        entries, seconds, _ = wait_for(
            lag_when(lambda f: f[0] >= 4 and f[1] >= 1.5), 20, "the lag to grow"
        )
        later_entries, later_seconds, _ = wait_for(
            lag_when(lambda f: f[0] > entries and f[1] > seconds), 20, "the lag to grow further"
        )
    finally:
        ingest.start()
    caught_up = wait_for(lag_when(lambda f: f[0] <= 2 and f[2] <= 2), 30, "ingest to catch up")
    # What is left is at most the newest heartbeat or two, not the backlog's age.
    assert caught_up[1] < later_seconds, (caught_up, later_seconds)
    assert later_entries > entries >= 4
