"""A real agent reports its own cost and record: N traces through Celery, K of them failing in
the agent, then its heartbeat's stats, as stored, shown by `fleettrace hosts show` and
exported per host, match the traces and what /proc says of its processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from tests.controller.conftest import AgentProcess, Agents, Cli, Tokens
from tests.controller.support import agent_samples, job_final, submit, wait_for, wait_job

pytestmark = pytest.mark.bcc

HOST = "selfstats"
OK = {"program": "syscalls", "params": {"per_process": False}}
# The API cannot know a host's cgroups: the agent finds this one missing and fails the trace.
MISSING_CGROUP = {**OK, "scope": {"cgroup": "fleettrace-no-such-group"}}
PLAN = ["ok", "fail", "ok", "fail", "ok"]  # N = 5 traces, K = 2 failures


@pytest.fixture(scope="module")
def worker(agent: Agents) -> AgentProcess:
    return agent.start(HOST)


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def tree_of(root: int) -> list[int]:
    """root and its descendants by PPid, read from every /proc/<pid>/status (the test's own
    walk, not the agent's)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(proc_status(int(entry.name))["PPid"])
            except (OSError, KeyError, ValueError):
                continue
    found, todo = [root], [root]
    while todo:
        parent = todo.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent]
        found += kids
        todo += kids
    return found


def vm_rss_sum(root: int) -> int:
    total = 0
    for pid in tree_of(root):
        try:
            total += int(proc_status(pid).get("VmRSS", "0 kB").split()[0]) * 1024
        except OSError:
            continue
    return total


def cpu_sum(root: int) -> float:
    """utime + stime + cutime + cstime over the tree, in seconds (a floor for the agent's)."""
    total = 0
    for pid in tree_of(root):
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        total += sum(int(f) for f in text[text.rindex(")") + 2 :].split()[11:15])
    return total / 100  # USER_HZ


def next_beat(client: TestClient, headers: dict[str, str], after: str | None) -> dict[str, Any]:
    """The host as the API shows it once a heartbeat newer than `after` is stored."""

    def newer() -> dict[str, Any] | None:
        host: dict[str, Any] = client.get(f"/v1/hosts/{HOST}", headers=headers).json()
        fresh = after is None or host["last_heartbeat"] > after
        return host if fresh and host["agent_stats"] is not None else None

    found: dict[str, Any] = wait_for(newer, 15, "a newer heartbeat with stats", 0.1)
    return found


def test_the_heartbeat_counts_the_traces_names_the_last_failure_and_sums_every_process(
    worker: AgentProcess,
    client: TestClient,
    tokens: Tokens,
    sessions: sessionmaker[Session],
    cli_for: Callable[[TestClient, str], Cli],
) -> None:
    admin, viewer = tokens.headers("admin"), tokens.headers("viewer")
    before = next_beat(client, viewer, None)["agent_stats"]
    assert before["traces_run_total"] == 0 and before["last_error"] is None
    failures: list[str] = []
    for kind in PLAN:
        body = MISSING_CGROUP if kind == "fail" else OK
        job = submit(client, admin, targets={"hosts": [HOST]}, duration_s=1, **body)
        done = wait_job(client, viewer, job["id"], job_final, 60, "the trace to end")
        run = done["runs"][0]
        if kind == "fail":
            assert run["state"] == "failed" and run["error"]["code"] == "bad_parameter", run
            failures.append(run["id"])
        else:
            assert run["state"] == "succeeded", run

    def counted() -> dict[str, Any] | None:
        host: dict[str, Any] = client.get(f"/v1/hosts/{HOST}", headers=viewer).json()
        stats = host["agent_stats"]
        return host if stats and stats["traces_run_total"] == len(PLAN) else None

    host = wait_for(counted, 15, "a heartbeat counting every trace", 0.1)
    stats = host["agent_stats"]
    assert stats["traces_failed_total"] == len(failures) == 2
    assert stats["last_error"].startswith(f"run {failures[-1]}: bad_parameter: ")
    assert stats["last_error_at"] > before["started_at"]
    assert stats["programs_loaded"] == 0

    # Memory: within a sane range of what the test reads for the worker and its children.
    time.sleep(3)  # the warm spare the last trace took is replaced and warmed by now
    measured_before = vm_rss_sum(worker.proc.pid)
    cpu_floor = cpu_sum(worker.proc.pid)
    now = client.get(f"/v1/hosts/{HOST}", headers=viewer).json()["last_heartbeat"]
    beat = next_beat(client, viewer, now)  # perhaps collected before the test's reading
    beats = [next_beat(client, viewer, beat["last_heartbeat"])]  # collected after it
    measured_after = vm_rss_sum(worker.proc.pid)
    rss = beats[-1]["agent_stats"]["rss_bytes"]
    low, high = sorted((measured_before, measured_after))
    assert 0.8 * low <= rss <= 1.2 * high, (rss, measured_before, measured_after)
    assert len(tree_of(worker.proc.pid)) >= 2  # the worker and at least its spare

    # CPU: cumulative (the exited trace children's included), and never going back.
    cpus = [b["agent_stats"]["cpu_seconds_total"] for b in beats]
    for _ in range(3):
        beats.append(next_beat(client, viewer, beats[-1]["last_heartbeat"]))
        cpus.append(beats[-1]["agent_stats"]["cpu_seconds_total"])
    assert cpus == sorted(cpus)
    assert cpus[-1] >= cpu_floor - 0.05, (cpus, cpu_floor)

    code, out, err = cli_for(client, tokens.token("viewer"))("hosts", "show", HOST)
    assert code == 0, err
    assert f"{len(PLAN)} run, 2 failed" in out
    assert f"run {failures[-1]}: bad_parameter:" in out and "MiB resident" in out

    samples = agent_samples(sessions)
    assert samples[("fleettrace_agent_traces_run_total", HOST)] == len(PLAN)
    assert samples[("fleettrace_agent_traces_failed_total", HOST)] == 2
    assert samples[("fleettrace_agent_programs_loaded", HOST)] == 0
    assert 0.8 * low <= samples[("fleettrace_agent_resident_memory_bytes", HOST)] <= 1.2 * high
    assert samples[("fleettrace_agent_cpu_seconds_total", HOST)] >= cpus[0]
