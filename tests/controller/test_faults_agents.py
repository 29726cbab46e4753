"""Agents die under running traces: every run still ends, says why, keeps what it gathered.

Real agents with real bcc, real Redis, Celery, ingest and database; agents beat every 0.5 s
and the controller calls a host silent after HEARTBEAT_TIMEOUT_S.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.schedules.models import ScheduleFire
from controller.schedules.scheduler import Scheduler
from tests.controller.conftest import (
    AgentProcess,
    Agents,
    IngestThread,
    Tokens,
)
from tests.controller.support import get_job, job_final, submit, wait_for, wait_job

pytestmark = pytest.mark.bcc
log = logging.getLogger(__name__)

HEARTBEAT_TIMEOUT_S = 6.0
GRACE_S = 1.0
SWEEP_S = 1.0
# "Within two heartbeat timeouts plus the grace" (and one sweep): the bound of every wait for
# a lost run.
LOST_WITHIN_S = 2 * HEARTBEAT_TIMEOUT_S + GRACE_S + SWEEP_S


@pytest.fixture(scope="module")
def settings_overrides() -> dict[str, Any]:
    return {"heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S, "lease_unlisted_grace_s": GRACE_S}


def _host() -> str:
    return f"kfault-{uuid.uuid4().hex[:6]}"


def _trace(client: TestClient, tokens: Tokens, host: str) -> dict[str, Any]:
    """A long trace on `host`, once it runs and has sent two snapshots."""
    job = submit(
        client,
        tokens.headers("operator"),
        duration_s=120,
        interval_s=0.5,
        targets={"hosts": [host]},
    )
    return _running(client, tokens, job["id"])


def _running(client: TestClient, tokens: Tokens, job_id: str) -> dict[str, Any]:
    def started(job: dict[str, Any]) -> bool:
        return all(r["state"] == "running" and r["snapshots"] >= 2 for r in job["runs"])

    return wait_job(client, tokens.headers("viewer"), job_id, started, 60, "a running trace")


def _prog_holders(agent: AgentProcess) -> dict[int, set[int]]:
    """The agent's descendants (trace children are the zygote's) that hold BPF programs:
    pid -> the program ids."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if entry.name.isdigit():
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, grew = {agent.proc.pid}, True
    while grew:
        below = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= below
        grew = bool(below)
    held: dict[int, set[int]] = {}
    for pid in tree - {agent.proc.pid}:
        try:
            ids = {
                int(line.split()[1])
                for info in Path(f"/proc/{pid}/fdinfo").iterdir()
                for line in info.read_text().splitlines()
                if line.startswith("prog_id:")
            }
        except (OSError, ValueError, IndexError):
            continue
        if ids:
            held[pid] = ids
    return held


def _loaded(prog_id: int) -> bool:
    shown = subprocess.run(
        ["bpftool", "prog", "show", "id", str(prog_id)], capture_output=True, check=False
    )
    return shown.returncode == 0


def _sigkill(agent: AgentProcess) -> datetime:
    """SIGKILL the agent alone: its trace child (own session) must notice by itself."""
    os.kill(agent.proc.pid, signal.SIGKILL)
    agent.proc.wait(timeout=10)
    return datetime.now(timezone.utc)


def _lost(
    client: TestClient,
    tokens: Tokens,
    job_id: str,
    why: str,
    since: datetime,
    within: float = LOST_WITHIN_S,
) -> dict[str, Any]:
    done = wait_job(client, tokens.headers("viewer"), job_id, job_final, within, "run lost")
    (run,) = done["runs"]
    finished = datetime.fromisoformat(run["finished_at"].replace("Z", "+00:00"))
    took = (finished - since).total_seconds()
    log.info("run %s: %s, %.1fs after the kill", run["id"], run["reason"], took)
    assert (run["state"], run["error"]["code"]) == ("failed", "lost"), run
    assert run["reason"].startswith(f"lost: {why}"), run
    assert done["state"] == "failed", done
    return done


def _fires(sessions: sessionmaker[Session], schedule_id: str) -> list[ScheduleFire]:
    with sessions() as session:
        query = select(ScheduleFire).where(ScheduleFire.schedule_id == schedule_id)
        return list(session.scalars(query.order_by(ScheduleFire.slot)))


def test_a_sigkilled_agents_run_ends_lost_keeps_its_results_and_the_schedule_moves_on(
    agent: Agents,
    client: TestClient,
    tokens: Tokens,
    sessions: sessionmaker[Session],
    scheduler: Scheduler,
) -> None:
    host = _host()
    victim = agent.start(host)
    operator, viewer = tokens.headers("operator"), tokens.headers("viewer")
    answer = client.post(
        "/v1/schedules",
        json={
            "name": f"s-{host}",
            "interval_s": 2,
            "misfire_grace_s": 30,
            "template": {
                "program": "syscalls",
                "duration_s": 120,
                "interval_s": 0.5,
                "targets": {"hosts": [host]},
            },
        },
        headers=operator,
    )
    assert answer.status_code == 201, answer.text
    schedule_id = answer.json()["id"]
    try:
        first = wait_for(lambda: _fires(sessions, schedule_id), 30, "the first slot")[0]
        assert first.outcome == "fired" and first.job_id is not None
        job = _running(client, tokens, first.job_id)
        holders = _prog_holders(victim)
        programs = set().union(*holders.values())
        assert programs, f"the trace child holds no BPF program: {holders}"
        killed = _sigkill(victim)
        done = _lost(
            client, tokens, job["id"], f"the agent on {host} stopped heartbeating at", killed
        )
        # Partial results: every snapshot stored before the kill stays, and the results show it.
        (run,) = done["runs"]
        assert run["snapshots"] >= 2
        results = client.get(f"/v1/jobs/{job['id']}/results", headers=viewer).json()
        assert results["hosts"][0]["seq"] >= 1 and results["merged"], results
        # Nothing left loaded: the child stopped by itself and the kernel unloaded its programs.
        wait_for(lambda: not any(map(_loaded, programs)), 15, f"programs {programs} unloaded")
        for pid in holders:
            wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 15, f"child {pid} gone")

        # Overlap was refused while the run was held; the next slot after it ended fires.
        def fired_again() -> list[ScheduleFire]:
            return [f for f in _fires(sessions, schedule_id)[1:] if f.outcome == "fired"]

        wait_for(fired_again, 30, "a slot fired after the lost run")
        outcomes = [f.outcome for f in _fires(sessions, schedule_id)]
        assert "skipped_overlap" in outcomes[: outcomes.index("fired", 1)], outcomes
    finally:
        client.post(f"/v1/schedules/{schedule_id}/pause", headers=operator)


def test_cancel_of_a_run_on_a_dead_agent_ends_it_at_once(
    agent: Agents, client: TestClient, tokens: Tokens, ingest: IngestThread
) -> None:
    host = _host()
    victim = agent.start(host)
    job = _trace(client, tokens, host)
    # Ingest off: no lease verdict can come first, so the cancel alone must end the run.
    ingest.stop()
    try:
        _sigkill(victim)

        def offline() -> bool:
            shown = client.get(f"/v1/hosts/{host}", headers=tokens.headers("viewer")).json()
            return shown["state"] == "offline"

        wait_for(offline, 2 * HEARTBEAT_TIMEOUT_S, f"{host} offline")
        assert get_job(client, tokens.headers("viewer"), job["id"])["state"] == "running"
        answer = client.post(f"/v1/jobs/{job['id']}/cancel", headers=tokens.headers("operator"))
        assert answer.status_code == 200, answer.text
        cancelled = answer.json()
    finally:
        ingest.start()
    (run,) = cancelled["runs"]
    assert (cancelled["state"], run["state"]) == ("cancelled", "cancelled"), cancelled
    assert run["reason"].startswith(f"cancelled while {host} was offline"), run
    kept = get_job(client, tokens.headers("viewer"), job["id"])
    assert (kept["state"], kept["runs"][0]["snapshots"] >= 2) == ("cancelled", True), kept


def test_an_agent_restarted_mid_run_ends_its_old_run_at_its_first_heartbeat(
    agent: Agents, client: TestClient, tokens: Tokens, ingest: IngestThread
) -> None:
    assert ingest.ingest is not None
    leases = ingest.ingest.leases
    rules = leases.rules
    # Silence is given longer than a restart takes: the verdict must come from the new beat.
    leases.rules = replace(rules, heartbeat_timeout_s=120)
    try:
        host = _host()
        victim = agent.start(host)
        job = _trace(client, tokens, host)
        killed = _sigkill(victim)
        agent.start(host, wait=False)  # its first beat comes before its (slow) probe
        why = f"the agent on {host} no longer has the run"
        _lost(client, tokens, job["id"], why, killed, within=60)
    finally:
        leases.rules = rules
