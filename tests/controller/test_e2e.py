"""End to end on real services: Redis, Celery, agents running real bcc, ingest, the API.

Two agents, `alpha` and `beta`, are each confined to their own cgroup, where the tests put
workloads whose answer is known.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import TypeAdapter
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.jobs.models import JobEvent, SnapshotRow
from controller.settings import Settings
from node_agent.protocol import CounterTable, Feature
from node_agent.wire import events_stream, host_queue
from tests.controller import support
from tests.controller.conftest import BIN, Agents, IngestThread, RecordingDispatcher, Tokens
from tests.controller.support import (
    capabilities,
    clean_env,
    envelope,
    get_job,
    heartbeat,
    job_final,
    register_host,
    runs_by_host,
    stop_process,
    submit,
    timed,
    wait_for,
    wait_job,
)
from tests.helpers import cgroup_name, row_value

pytestmark = pytest.mark.bcc

HOSTS = ("alpha", "beta")
EXPIRY_S = 3.0
N, M = 3000, 7000  # getppid calls in alpha's and beta's cgroups


@pytest.fixture(scope="module")
def settings_overrides() -> dict[str, Any]:
    return {"task_expiry_s": EXPIRY_S}


@pytest.fixture(scope="module")
def fleet(agent: Agents) -> dict[str, Any]:
    """Both agents, started together; each is confined to its cgroup (made per test)."""
    return agent.start_all(HOSTS)


@pytest.fixture
def cgroups(make_cgroup: Callable[[str], Path]) -> dict[str, Path]:
    groups = {host: make_cgroup(host) for host in HOSTS}
    assert all(path.name == cgroup_name(host) for host, path in groups.items())
    return groups


class Workload(support.Workload):
    """A process that waits for a go, then makes exactly `calls` getppid syscalls.

    With no count it makes them until killed, one every 10 ms.
    """

    def __init__(self, group: Path, calls: int | None) -> None:
        if calls is None:
            loop = "while True:\n    os.getppid()\n    time.sleep(0.01)\n"
        else:
            loop = f"for _ in range({calls}): os.getppid()\n"
        super().__init__(group, loop)


@pytest.fixture
def workloads() -> Iterator[list[Workload]]:
    made: list[Workload] = []
    yield made
    for w in made:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


StartWorkload = Callable[[str, int | None], Workload]


@pytest.fixture
def workload(cgroups: dict[str, Path], workloads: list[Workload]) -> StartWorkload:
    """Factory: a Workload in a host's cgroup, killed after the test if it still runs."""

    def start(host: str, calls: int | None) -> Workload:
        made = Workload(cgroups[host], calls)
        workloads.append(made)
        return made

    return start


def all_running(job: dict[str, Any]) -> bool:
    return all(run["state"] == "running" for run in job["runs"])


def table_rows(result: dict[str, Any]) -> dict[str, int]:
    return {keys[0]: values[0] for keys, values in result["rows"]}


def stored_seqs(sessions: sessionmaker[Session], run_id: str) -> list[int]:
    with sessions() as session:
        query = select(SnapshotRow.seq).where(SnapshotRow.run_id == run_id)
        return sorted(session.scalars(query))


def test_two_hosts_show_their_own_workloads_and_the_merge_sums_them(
    fleet: dict[str, Any], workload: StartWorkload, client: TestClient, tokens: Tokens
) -> None:
    for host in fleet.values():
        assert host["agent_version"] and host["capabilities"]["features"]["tracepoints"], host
    alpha, beta = workload("alpha", N), workload("beta", M)
    viewer = tokens.headers("viewer")
    job = submit(
        client,
        tokens.headers("operator"),
        program="syscalls",
        params={"per_process": False},
        duration_s=3,
        targets={"all": True},
    )
    assert sorted(runs_by_host(job)) == sorted(HOSTS)
    wait_job(client, viewer, job["id"], all_running, 30, "both runs running")
    for w in (alpha, beta):
        w.go()
    for w in (alpha, beta):
        w.wait()
    done = wait_job(client, viewer, job["id"], job_final, 30, "the job to finish")
    assert done["state"] == "succeeded", done
    assert all(run["snapshots"] >= 1 for run in done["runs"])

    body = client.get(f"/v1/jobs/{job['id']}/results", headers=viewer).json()
    per_host = {h["host"]: table_rows(h["results"][0]) for h in body["hosts"]}
    assert all(h["final"] for h in body["hosts"])
    assert per_host["alpha"]["getppid"] == N
    assert per_host["beta"]["getppid"] == M
    merged = table_rows(body["merged"][0])
    assert merged["getppid"] == N + M
    # Every syscall of the merge is the sum of the two hosts' counts.
    names = set(per_host["alpha"]) | set(per_host["beta"])
    assert merged == {n: per_host["alpha"].get(n, 0) + per_host["beta"].get(n, 0) for n in names}


def test_an_offline_host_expires_and_the_job_is_partial(
    fleet: dict[str, Any], cgroups: dict[str, Path], client: TestClient, tokens: Tokens
) -> None:
    admin, viewer = tokens.headers("admin"), tokens.headers("viewer")
    register_host(client, admin, "ghost")
    try:
        job = submit(client, admin, duration_s=2, targets={"hosts": ["alpha", "ghost"]})
        with timed() as elapsed:

            def alpha_started(job: dict[str, Any]) -> bool:
                return runs_by_host(job)["alpha"]["state"] in ("running", "succeeded")

            # Waiting for alpha first: a compile slower than the expiry would look final early.
            wait_job(client, viewer, job["id"], alpha_started, 30, "alpha's run to start")
            done = wait_job(client, viewer, job["id"], job_final, 30, "the job to finish")
        runs = runs_by_host(done)
        assert runs["ghost"]["state"] == "expired", runs["ghost"]
        assert "expired" in runs["ghost"]["reason"]
        assert runs["alpha"]["state"] == "succeeded", runs["alpha"]
        assert done["state"] == "partial"
        assert elapsed() < EXPIRY_S + 10
    finally:
        client.delete("/v1/hosts/ghost", headers=admin)


def test_a_host_that_cannot_run_a_program_gets_unsupported_and_no_task(
    fleet: dict[str, Any],
    client: TestClient,
    tokens: Tokens,
    dispatcher: RecordingDispatcher,
    redis_client: redis.Redis,
) -> None:
    admin, viewer = tokens.headers("admin"), tokens.headers("viewer")
    register_host(client, admin, "legacy")
    try:
        caps = capabilities(without=[Feature.perf_events])
        redis_client.xadd(
            events_stream("legacy"), {"data": envelope("legacy", heartbeat("legacy", caps))}
        )
        wait_for(
            lambda: client.get("/v1/hosts/legacy", headers=viewer).json()["capabilities"],
            10,
            "legacy's heartbeat to be ingested",
        )
        sent = len(dispatcher.sent)
        job = submit(client, admin, program="cpu_profile", targets={"hosts": ["legacy"]})
        (run,) = job["runs"]
        assert run["state"] == "unsupported"
        assert "perf_events" in run["reason"]
        assert job["state"] == "failed"
        assert len(dispatcher.sent) == sent
        assert redis_client.llen(host_queue("legacy")) == 0
    finally:
        client.delete("/v1/hosts/legacy", headers=admin)


def test_cancel_mid_run_stops_the_agents_quickly_and_keeps_partial_results(
    fleet: dict[str, Any], workload: StartWorkload, client: TestClient, tokens: Tokens
) -> None:
    operator, viewer = tokens.headers("operator"), tokens.headers("viewer")
    for w in [workload(host, None) for host in HOSTS]:  # endless: they run until killed
        w.go()
    job = submit(client, operator, duration_s=30, interval_s=0.5, targets={"hosts": list(HOSTS)})

    def running_with_a_snapshot(job: dict[str, Any]) -> bool:
        return all_running(job) and all(run["snapshots"] >= 1 for run in job["runs"])

    wait_job(client, viewer, job["id"], running_with_a_snapshot, 30, "runs with snapshots")
    with timed() as elapsed:
        answer = client.post(f"/v1/jobs/{job['id']}/cancel", headers=operator)
        assert answer.status_code == 200, answer.text
        done = wait_job(client, viewer, job["id"], job_final, 10, "the runs to stop")
        took = elapsed()
    assert done["state"] == "cancelled"
    assert [run["state"] for run in done["runs"]] == ["cancelled", "cancelled"]
    # The cancel, not the 30 s duration, ended them (how fast a cancel lands is not a test's
    # to time: a loaded machine takes seconds).
    assert took < 10, f"cancel took {took:.2f}s"
    body = client.get(f"/v1/jobs/{job['id']}/results", headers=viewer).json()
    for host in body["hosts"]:
        assert host["final"] and host["seq"] >= 1, host
        assert host["interval_end"] - host["interval_start"] < 10, host
        table = TypeAdapter(CounterTable).validate_python(host["results"][0])
        assert row_value(table, syscall="getppid") > 0, host


@pytest.fixture
def ingest_process(
    settings: Settings, ingest: IngestThread, tmp_path: Path
) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Swap the ingest thread for real `fleettrace ingest` processes; the thread comes back."""
    ingest.stop()
    started: list[subprocess.Popen[bytes]] = []
    env = clean_env(
        FLEETTRACE_DATABASE_URL=settings.database_url,
        FLEETTRACE_REDIS_URL=settings.redis_url,
        FLEETTRACE_INGEST_CLAIM_IDLE_MS=str(settings.ingest_claim_idle_ms),
        FLEETTRACE_TASK_EXPIRY_S=str(settings.task_expiry_s),
    )

    def start() -> subprocess.Popen[bytes]:
        with (tmp_path / "ingest.log").open("ab") as log:
            proc = subprocess.Popen(
                [str(BIN / "fleettrace"), "ingest"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            stop_process(proc)
        ingest.start()


def test_ingest_killed_and_restarted_mid_job_loses_and_doubles_no_snapshot(
    fleet: dict[str, Any],
    cgroups: dict[str, Path],
    client: TestClient,
    tokens: Tokens,
    sessions: sessionmaker[Session],
    ingest_process: Callable[[], subprocess.Popen[bytes]],
    redis_client: redis.Redis,
    settings: Settings,
) -> None:
    operator, viewer = tokens.headers("operator"), tokens.headers("viewer")
    first = ingest_process()
    job = submit(client, operator, duration_s=4, interval_s=0.5, targets={"hosts": ["alpha"]})
    run_id = job["runs"][0]["id"]
    wait_for(lambda: len(stored_seqs(sessions, run_id)) >= 2, 30, "two snapshots stored")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=5)
    killed_at = len(stored_seqs(sessions, run_id))
    time.sleep(1.0)  # the agent keeps streaming into the void meanwhile
    assert len(stored_seqs(sessions, run_id)) == killed_at
    # Make sure the worst case is there: entries delivered to a dead consumer, never acked (the
    # next process has a name of its own and claims them once idle).
    group, consumer = settings.ingest_group, f"dead-{first.pid}"
    redis_client.xreadgroup(group, consumer, {events_stream("alpha"): ">"}, count=10_000)
    unacked = pending_snapshots(redis_client, settings, run_id)
    assert unacked, "no snapshot of the run is waiting unacked"
    ingest_process()
    done = wait_job(client, viewer, job["id"], job_final, 30, "the job to finish")
    assert done["state"] == "succeeded", done
    seqs = stored_seqs(sessions, run_id)
    assert seqs == list(range(len(seqs))), seqs
    assert len(seqs) >= 8, seqs  # 4 s at one snapshot per 0.5 s, plus the final one
    with sessions() as session:
        final = session.scalars(
            select(SnapshotRow.final).where(SnapshotRow.run_id == run_id).order_by(SnapshotRow.seq)
        ).all()
        logged = session.scalars(
            select(JobEvent.payload).where(JobEvent.run_id == run_id, JobEvent.kind == "snapshot")
        ).all()
    assert final[-1] and not any(final[:-1])
    assert sorted(p["seq"] for p in logged) == seqs
    assert set(unacked) <= set(seqs)


def pending_snapshots(client: redis.Redis, settings: Settings, run_id: str) -> list[int]:
    """Seqs of the run's snapshots delivered to a consumer of the group but not acked."""
    stream = events_stream("alpha")
    pending = client.xpending_range(stream, settings.ingest_group, "-", "+", 10_000)
    seqs = []
    for entry in pending:
        entries: Any = client.xrange(stream, entry["message_id"], entry["message_id"])
        for _, fields in entries:
            event = json.loads(fields[b"data"])["event"]
            if event["type"] == "snapshot" and event["run_id"] == run_id:
                seqs.append(int(event["seq"]))
    return seqs


def parse_sse(text: str) -> list[tuple[int | None, str, dict[str, Any]]]:
    frames = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value.lstrip(" ")
        if "event" in fields:
            event_id = int(fields["id"]) if "id" in fields else None
            frames.append((event_id, fields["event"], json.loads(fields.get("data", "{}"))))
    return frames


def read_events(
    client: TestClient, headers: dict[str, str], job_id: str
) -> list[tuple[int | None, str, dict[str, Any]]]:
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        return parse_sse(answer.read().decode())


def test_events_follow_a_job_live_and_replay_it_in_order_after_it_ended(
    fleet: dict[str, Any], cgroups: dict[str, Path], client: TestClient, tokens: Tokens
) -> None:
    viewer = tokens.headers("viewer")
    operator = tokens.headers("operator")
    job = submit(client, operator, duration_s=2, interval_s=0.5, targets={"hosts": list(HOSTS)})
    live = read_events(client, viewer, job["id"])  # subscribed at once: ends when the job does
    done = get_job(client, viewer, job["id"])
    assert done["state"] == "succeeded", done
    frames = read_events(client, viewer, job["id"])
    assert frames == live
    assert frames[-1][1] == "end"
    ids = [f[0] or 0 for f in frames[:-1]]
    assert all(ids) and ids == sorted(ids) and len(set(ids)) == len(ids)
    assert frames[-2][1:] == ("job", {"state": "succeeded"})
    for run in done["runs"]:
        mine = [(kind, data) for _, kind, data in frames if data.get("run_id") == run["id"]]
        states = [d["state"] for k, d in mine if k == "state"]
        assert states == ["pending", "running", "succeeded"], states
        kinds = [k for k, _ in mine]
        # Snapshots come between running and the final state, in sequence, the last one final.
        assert kinds[:2] == ["state", "state"] and kinds[-1] == "state"
        assert set(kinds[2:-1]) == {"snapshot"}
        seqs = [d["seq"] for k, d in mine if k == "snapshot"]
        assert seqs == list(range(run["snapshots"])), seqs
        snaps = [d for k, d in mine if k == "snapshot"]
        assert snaps[-1]["final"] and not any(s["final"] for s in snaps[:-1])
        assert all(s["results"][0]["name"] == "syscalls" for s in snaps)
    # A subscriber that saw some events resumes after the last one it saw.
    resume_at = frames[2][0]
    headers = {**viewer, "Last-Event-ID": str(resume_at)}
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=headers) as answer:
        rest = parse_sse(answer.read().decode())
    assert [f[0] for f in rest] == [f[0] for f in frames[3:]]


def test_attach_options_are_chosen_by_each_agents_probe_and_reported(
    fleet: dict[str, Any], cgroups: dict[str, Path], client: TestClient, tokens: Tokens
) -> None:
    """On this kernel (no kprobes): tcpconnlat forced to kprobes is unsupported on every host
    at dispatch, with the reason; by default each host takes the tracepoint (its probe says it
    has it) and its stats say so."""
    operator, viewer = tokens.headers("operator"), tokens.headers("viewer")
    if all(h["capabilities"]["features"]["kprobes"] for h in fleet.values()):
        pytest.skip("this kernel has kprobes: the forced option would run")
    forced = submit(
        client,
        operator,
        program="tcpconnlat",
        params={"attach": "kprobe"},
        duration_s=1,
        targets={"all": True},
    )
    # Judged at dispatch, from each host's probe: no task is sent.
    for run in runs_by_host(forced).values():
        assert run["state"] == "unsupported", json.dumps(run)
        assert "tcpconnlat: attach=kprobe fails on this host: kprobe needs kprobes" in run["reason"]
    auto = submit(client, operator, program="tcpconnlat", duration_s=1, targets={"all": True})
    done = wait_job(client, viewer, auto["id"], job_final, 60, "the auto job to end")
    assert done["state"] == "succeeded", done
    body = client.get(f"/v1/jobs/{auto['id']}/results", headers=viewer).json()
    assert {h["host"]: h["stats"]["attach"] for h in body["hosts"]} == dict.fromkeys(
        HOSTS, "tracepoint:sock:inet_sock_set_state"
    )
