"""bpftrace across a real fleet: real agents running the host's bpftrace, Celery on a real
Redis, ingest, the database, the API and the CLI.

Three agents allow bpftrace (`bt-a`, `bt-b`, `bt-c`), one does not (`bt-off`); each is
confined to its own cgroup, where the tests start workloads whose answer is known.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.schedules.scheduler import Scheduler
from node_agent.safe_text import printable
from tests.controller.conftest import Agents, Cli, RecordingDispatcher, Tokens
from tests.controller.support import (
    Workload,
    field_paths,
    get_job,
    job_final,
    runs_by_host,
    submit,
    wait_for,
    wait_job,
)
from tests.helpers import cgroup_name

pytestmark = pytest.mark.bcc

ON = ("bt-a", "bt-b", "bt-c")  # agents that allow bpftrace
OFF = "bt-off"
N, M = 3000, 7000  # getppid calls on bt-a and bt-b
COMM = "ft-bt-count"
COUNT = "tracepoint:syscalls:sys_enter_getppid { @[comm] = count(); }"
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


@pytest.fixture(scope="module")
def fleet(agent: Agents) -> dict[str, dict[str, Any]]:
    """The four agents, started together, each confined to its cgroup (made per test)."""
    started = [agent.start(h, cgroup_name(h), wait=False, allow_bpftrace=True) for h in ON]
    started.append(agent.start(OFF, cgroup_name(OFF), wait=False))
    return {a.host: agent.wait_online(a) for a in started}


@pytest.fixture
def cgroups(make_cgroup: Callable[[str], Path]) -> dict[str, Path]:
    return {host: make_cgroup(host) for host in (*ON, OFF)}


StartWorkload = Callable[..., Workload]


@pytest.fixture
def workload(cgroups: dict[str, Path]) -> Iterator[StartWorkload]:
    """Factory: workload(host, body, comm=COMM); killed after the test if it still runs."""
    made: list[Workload] = []

    def start(host: str, body: str, comm: str | bytes = COMM) -> Workload:
        raw = comm.encode() if isinstance(comm, str) else comm
        made.append(Workload(cgroups[host], body, raw))
        return made[-1]

    yield start
    for w in made:
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.wait()


def getppid_calls(n: int) -> str:
    return f"for _ in range({n}): os.getppid()\n"


def all_running(job: dict[str, Any]) -> bool:
    return all(run["state"] == "running" for run in job["runs"])


def bpftrace_job(
    client: TestClient, tokens: Tokens, script: str, hosts: list[str], **job: Any
) -> dict[str, Any]:
    """A bpftrace job submitted by an admin."""
    job.setdefault("duration_s", 4)
    return submit(
        client,
        tokens.headers("admin"),
        program="bpftrace",
        params={"script": script, **job.pop("params", {})},
        targets={"hosts": hosts},
        **job,
    )


def run_job(
    client: TestClient, tokens: Tokens, job: dict[str, Any], workloads: list[Workload]
) -> dict[str, Any]:
    """Once every run is running, let the workloads go; the job once it ended."""
    viewer = tokens.headers("viewer")
    wait_job(client, viewer, job["id"], all_running, 60, "every run running")
    for w in workloads:
        w.go()
    for w in workloads:
        w.wait()
    return wait_job(client, viewer, job["id"], job_final, 60, "the job to finish")


def results(client: TestClient, tokens: Tokens, job_id: str) -> dict[str, Any]:
    answer = client.get(f"/v1/jobs/{job_id}/results", headers=tokens.headers("viewer"))
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def host_results(body: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {h["host"]: h["results"] for h in body["hosts"]}


def named(items: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [r for r in items if r["kind"] == kind and r["name"] == name]
    assert len(found) == 1, (kind, name, items)
    return found[0]


def table_rows(table: dict[str, Any]) -> dict[Any, int]:
    """A one-key counter table as key -> first value."""
    return {keys[0]: values[0] for keys, values in table["rows"]}


# -- counts -----------------------------------------------------------------------------------


def test_counts_are_exact_per_host_each_in_its_own_cgroup_through_the_cli(
    fleet: dict[str, Any],
    workload: StartWorkload,
    client: TestClient,
    tokens: Tokens,
    cli_for: Callable[[TestClient, str], Cli],
) -> None:
    for host in ON:
        assert fleet[host]["capabilities"]["features"]["bpftrace"], fleet[host]["capabilities"]
    alpha, beta = workload("bt-a", getppid_calls(N)), workload("bt-b", getppid_calls(M))
    viewer = tokens.headers("viewer")
    before = {j["id"] for j in client.get("/v1/jobs", headers=viewer).json()["data"]}
    released: list[BaseException] = []

    def release() -> None:
        """The CLI waits for the job to end: the workloads go once its runs are attached."""
        try:

            def started() -> dict[str, Any] | None:
                jobs = client.get("/v1/jobs", params={"program": "bpftrace"}, headers=viewer)
                new = [j for j in jobs.json()["data"] if j["id"] not in before]
                return new[0] if new and all_running(new[0]) else None

            wait_for(started, 60, "the CLI's job running", 0.1)
            for w in (alpha, beta):
                w.go()
        except BaseException as exc:
            released.append(exc)

    helper = threading.Thread(target=release, daemon=True)
    helper.start()
    cli = cli_for(client, tokens.token("admin"))
    code, out, err = cli(
        "jobs", "submit", "bpftrace", "--script", COUNT, "--hosts", "bt-a,bt-b",
        "--duration", "5s", "--wait",
    )  # fmt: skip
    helper.join(timeout=60)
    assert not released, released
    assert code == 0, (out, err)
    for w in (alpha, beta):
        w.wait()
    job = client.get("/v1/jobs", params={"program": "bpftrace"}, headers=viewer).json()["data"][0]
    assert job["id"] not in before and job["state"] == "succeeded", job
    body = results(client, tokens, job["id"])
    per_host = {
        h: table_rows(named(r, "counter_table", "@")) for h, r in host_results(body).items()
    }
    # Each agent counts its own cgroup only: the workload, nothing else, exactly.
    assert per_host == {"bt-a": {COMM: N}, "bt-b": {COMM: M}}, per_host
    assert table_rows(named(body["merged"], "counter_table", "@")) == {COMM: N + M}
    # the side-by-side table the CLI printed: one row, each host's count and the total
    assert [line.split() for line in out.splitlines() if COMM in line] == [
        [COMM, str(N), str(M), str(N + M)]
    ], out


# -- histograms against the catalog ----------------------------------------------------------

# 100 sleeps of 1.5 ms, 100 of 5 ms: each far from a log2 bound (1024, 2048, 4096, 8192 us),
# so the microsecond between where the two tracers take their clocks cannot split a sleep
# across a bound (8 ms sleeps, a few us over 8,000, sit right at 8,192 and do).
SLEEPS = "for _ in range(100): time.sleep(0.0015)\nfor _ in range(100): time.sleep(0.005)\n"
HIST = """\
tracepoint:syscalls:sys_enter_clock_nanosleep { @start[tid] = nsecs; }
tracepoint:syscalls:sys_exit_clock_nanosleep /@start[tid]/ {
  @usecs = hist((nsecs - @start[tid]) / 1000);
  delete(@start[tid]);
}
"""


def test_hist_lands_in_the_same_buckets_as_syscall_latency(
    fleet: dict[str, Any], workload: StartWorkload, client: TestClient, tokens: Tokens
) -> None:
    sleeper = workload("bt-a", SLEEPS)
    ours = bpftrace_job(client, tokens, HIST, ["bt-a"], duration_s=8)
    catalog = submit(
        client,
        tokens.headers("operator"),
        program="syscall_latency",
        params={"unit": "usec", "syscall": "clock_nanosleep"},
        duration_s=8,
        targets={"hosts": ["bt-a"]},
    )
    viewer = tokens.headers("viewer")
    wait_job(client, viewer, catalog["id"], all_running, 60, "syscall_latency running")
    done = run_job(client, tokens, ours, [sleeper])
    assert done["state"] == "succeeded", done
    other = wait_job(client, viewer, catalog["id"], job_final, 60, "syscall_latency done")
    assert other["state"] == "succeeded", other

    hist = named(
        host_results(results(client, tokens, ours["id"]))["bt-a"], "log2_histogram", "@usecs"
    )
    theirs = [
        r
        for r in host_results(results(client, tokens, catalog["id"]))["bt-a"]
        if r["kind"] == "log2_histogram"
    ]
    assert len(theirs) == 1 and theirs[0]["labels"] == {"syscall": "clock_nanosleep"}, theirs
    buckets = dict(map(tuple, hist["buckets"]))
    assert sum(buckets.values()) == 200, hist
    assert buckets == dict(map(tuple, theirs[0]["buckets"])), (hist, theirs)
    assert len(buckets) >= 2, hist  # the two sleeps are 8x apart: at least two log2 slots


# -- lhist and stacks through a report -------------------------------------------------------

LHIST_STACKS = """\
tracepoint:syscalls:sys_enter_pread64 {
  @size = lhist(args->count, 0, 4096, 64);
  @stacks[kstack] = count();
}
"""
ODD = "bt-c"
READ_SIZE = {"bt-a": 100, "bt-b": 200, ODD: 3000}  # bytes per pread, 100 preads each


def test_lhist_and_kernel_stacks_through_a_report(
    fleet: dict[str, Any],
    workload: StartWorkload,
    client: TestClient,
    tokens: Tokens,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.write_bytes(b"x" * 4096)
    readers = [
        workload(
            host,
            f"fd = os.open({str(data)!r}, os.O_RDONLY)\n"
            f"for _ in range(100): os.pread(fd, {size}, 0)\n",
        )
        for host, size in READ_SIZE.items()
    ]
    job = bpftrace_job(client, tokens, LHIST_STACKS, list(ON))
    done = run_job(client, tokens, job, readers)
    assert done["state"] == "succeeded", done["runs"]

    per_host = host_results(results(client, tokens, job["id"]))
    for host, size in READ_SIZE.items():
        lhist = named(per_host[host], "linear_histogram", "@size")
        assert (lhist["min"], lhist["max"], lhist["step"]) == (0, 4096, 64), lhist
        # slot i holds [(i-1)*64, i*64): every pread of this host in one slot
        assert [tuple(b) for b in lhist["buckets"] if b[1]] == [(size // 64 + 1, 100)], lhist
        stacks = named(per_host[host], "folded_stacks", "@stacks")
        assert sum(s["count"] for s in stacks["stacks"]) == 100, stacks
        assert all(s["frames"] for s in stacks["stacks"]), stacks
        # the kernel's own frames of a syscall's entry, root first
        frames = [f for s in stacks["stacks"] for f in s["frames"]]
        assert any(f.startswith("entry_SYSCALL_64") for f in frames), stacks
        assert stacks["stacks"][0]["frames"][0].startswith("entry_SYSCALL_64"), stacks

    viewer = tokens.headers("viewer")
    answer = client.get(f"/v1/jobs/{job['id']}/report", headers=viewer)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    # Sizes: bt-c's percentiles are the outliers, and only its. (Every host made exactly 100
    # preads, so the event rates differ only by each run's span: that jitter may be ranked
    # too, and is left out here.)
    sizes = [o for o in report["outliers"] if not o["metric"].endswith(":rate")]
    assert {o["host"] for o in sizes} == {ODD}, report["outliers"]
    assert "hist:@size:p50" in {o["metric"] for o in sizes}, report["outliers"]
    folded = client.get(f"/v1/jobs/{job['id']}/report", params={"format": "folded"}, headers=viewer)
    assert folded.status_code == 200, folded.text
    total = sum(int(line.rsplit(" ", 1)[1]) for line in folded.text.splitlines() if line)
    assert total == 300, folded.text
    page = client.get(f"/v1/jobs/{job['id']}/report", params={"format": "html"}, headers=viewer)
    assert page.status_code == 200
    assert "fleet flame graph" in page.text and f"flame graph {ODD}" in page.text


# -- refused ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "named_in_error"),
    [
        ('tracepoint:syscalls:sys_enter_getppid { system("id"); }', "system"),
        ('tracepoint:syscalls:sys_enter_getppid { signal("KILL"); }', "signal"),  # --unsafe only
    ],
)
def test_state_changing_builtins_are_refused_before_anything_runs(
    fleet: dict[str, Any],
    client: TestClient,
    tokens: Tokens,
    dispatcher: RecordingDispatcher,
    script: str,
    named_in_error: str,
) -> None:
    admin = tokens.headers("admin")
    jobs_before = client.get("/v1/jobs", headers=admin).json()["count"]
    sent = len(dispatcher.sent)
    body = {"program": "bpftrace", "params": {"script": script}, "duration_s": 2}
    answer = client.post("/v1/jobs", json={**body, "targets": {"hosts": ["bt-a"]}}, headers=admin)
    assert answer.status_code == 422, answer.text
    assert "params.script" in field_paths(answer), answer.text
    assert named_in_error in answer.text, answer.text
    assert client.get("/v1/jobs", headers=admin).json()["count"] == jobs_before
    assert len(dispatcher.sent) == sent


def test_a_script_that_does_not_parse_fails_naming_its_line(
    fleet: dict[str, Any], cgroups: dict[str, Path], client: TestClient, tokens: Tokens
) -> None:
    script = "tracepoint:syscalls:sys_enter_getppid {\n  @x = count();\n  @y = = 1;\n}\n"
    answer = client.post(
        "/v1/jobs",
        json={
            "program": "bpftrace",
            "params": {"script": script},
            "duration_s": 2,
            "targets": {"hosts": ["bt-a"]},
        },
        headers=tokens.headers("admin"),
    )
    if answer.status_code == 422:  # refused at the API: the error must still name line 3
        assert "params.script" in field_paths(answer) and ":3" in answer.text, answer.text
        return
    assert answer.status_code == 201, answer.text
    viewer = tokens.headers("viewer")
    done = wait_job(client, viewer, answer.json()["id"], job_final, 60, "the job to end")
    (run,) = done["runs"]
    assert run["state"] == "failed", run
    text = json.dumps(run["error"])
    assert "line 3" in text and "@y = = 1" in text, run["error"]


def bpftrace_pids(agent_pid: int) -> list[int]:
    """bpftrace processes descending from the agent."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        pid = int(entry.name)
        names[pid] = stat[stat.index("(") + 1 : stat.rindex(")")]
        parents[pid] = int(stat.rpartition(")")[2].split()[1])

    def descends(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == agent_pid:
                return True
        return False

    return [pid for pid, name in names.items() if name == "bpftrace" and descends(pid)]


def bpf_program_ids(pid: int) -> set[int]:
    """The BPF programs `pid` holds open (its fdinfo)."""
    return {
        int(line.split()[1])
        for info in Path(f"/proc/{pid}/fdinfo").iterdir()
        for line in info.read_text().splitlines()
        if line.startswith("prog_id:")
    }


def loaded(prog_id: int) -> bool:
    """Whether the kernel still has the program (bpftool here lists none, but shows by id)."""
    shown = subprocess.run(["bpftool", "prog", "show", "id", str(prog_id)], capture_output=True)
    return shown.returncode == 0


@dataclass
class Traced:
    """A bpftrace job on one host counting a workload's getppid calls, with a snapshot
    stored, and the pid of its bpftrace."""

    job: dict[str, Any]
    agent_pid: int
    pid: int

    def kept(self, client: TestClient, tokens: Tokens) -> int:
        """The workload's count in the run's stored results (its last snapshot)."""
        (host,) = results(client, tokens, self.job["id"])["hosts"]
        return table_rows(named(host["results"], "counter_table", "@")).get(COMM, 0)


def traced_ticker(
    host: str,
    duration_s: float,
    workload: StartWorkload,
    agent: Agents,
    client: TestClient,
    tokens: Tokens,
) -> Traced:
    """An endless getppid workload on `host` and a bpftrace job counting it, once a snapshot
    of the job is stored."""
    workload(host, "while True:\n    os.getppid()\n    time.sleep(0.01)\n").go()
    job = bpftrace_job(client, tokens, COUNT, [host], duration_s=duration_s, interval_s=0.5)

    def with_a_snapshot(job: dict[str, Any]) -> bool:
        return all_running(job) and job["runs"][0]["snapshots"] >= 1

    wait_job(client, tokens.headers("viewer"), job["id"], with_a_snapshot, 60, "a snapshot")
    (worker,) = [a for a in agent.started if a.host == host]
    (pid,) = bpftrace_pids(worker.proc.pid)
    return Traced(job, worker.proc.pid, pid)


def test_a_bpftrace_that_overruns_its_deadline_is_killed_and_partial_results_are_kept(
    fleet: dict[str, Any],
    workload: StartWorkload,
    agent: Agents,
    client: TestClient,
    tokens: Tokens,
) -> None:
    traced = traced_ticker("bt-a", 3, workload, agent, client, tokens)
    pid = traced.pid
    programs = bpf_program_ids(pid)
    assert programs and all(loaded(p) for p in programs), programs
    os.kill(pid, signal.SIGSTOP)  # hung: it will not answer the deadline's SIGINT
    try:
        viewer = tokens.headers("viewer")
        done = wait_job(client, viewer, traced.job["id"], job_final, 60, "the run to end")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    (run,) = done["runs"]
    assert run["state"] == "timed_out" and run["error"]["code"] == "killed", run
    assert "did not stop" in run["error"]["message"], run
    assert not Path(f"/proc/{pid}").exists(), "bpftrace outlived its run"
    assert bpftrace_pids(traced.agent_pid) == []
    # the kernel frees a dead process's programs asynchronously
    wait_for(lambda: not any(loaded(p) for p in programs), 10, "bpftrace's programs unloaded")
    assert traced.kept(client, tokens) > 0, run  # the last snapshot, kept


def test_bpftrace_killed_mid_run_fails_the_run_keeps_its_snapshot_and_the_agent_goes_on(
    fleet: dict[str, Any],
    workload: StartWorkload,
    agent: Agents,
    client: TestClient,
    tokens: Tokens,
) -> None:
    traced = traced_ticker("bt-b", 30, workload, agent, client, tokens)
    os.kill(traced.pid, signal.SIGKILL)  # bpftrace dies under the trace (OOM killer, an operator)
    viewer = tokens.headers("viewer")
    done = wait_job(client, viewer, traced.job["id"], job_final, 20, "the run to end")  # not 30 s
    (run,) = done["runs"]
    assert run["state"] == "failed" and "killed by a signal" in run["error"]["message"], run
    assert run["error"]["code"] == "killed", run
    assert traced.kept(client, tokens) > 0, run
    assert bpftrace_pids(traced.agent_pid) == []
    after = bpftrace_job(client, tokens, COUNT, ["bt-b"], duration_s=1)
    ok = wait_job(client, viewer, after["id"], job_final, 60, "the next bpftrace job")
    assert ok["state"] == "succeeded", ok


# -- policy -------------------------------------------------------------------------------------


def test_an_operator_may_not_submit_or_schedule_bpftrace(
    fleet: dict[str, Any], client: TestClient, tokens: Tokens, dispatcher: RecordingDispatcher
) -> None:
    operator = tokens.headers("operator")
    sent = len(dispatcher.sent)
    job = {
        "program": "bpftrace",
        "params": {"script": COUNT},
        "duration_s": 2,
        "targets": {"hosts": ["bt-a"]},
    }
    answer = client.post("/v1/jobs", json=job, headers=operator)
    assert answer.status_code == 403, answer.text
    schedule = {"name": f"bt-{uuid.uuid4().hex[:6]}", "interval_s": 60, "template": job}
    answer = client.post("/v1/schedules", json=schedule, headers=operator)
    assert answer.status_code == 403, answer.text
    assert len(dispatcher.sent) == sent


def test_an_agent_without_allow_bpftrace_reports_the_run_unsupported_and_stays_healthy(
    fleet: dict[str, Any], cgroups: dict[str, Path], client: TestClient, tokens: Tokens
) -> None:
    job = bpftrace_job(client, tokens, COUNT, [OFF], duration_s=2)
    viewer = tokens.headers("viewer")
    done = wait_job(client, viewer, job["id"], job_final, 60, "the run to end")
    (run,) = done["runs"]
    assert run["state"] == "unsupported", run
    assert "allow_bpftrace" in json.dumps([run["reason"], run["error"]]), run
    host = client.get(f"/v1/hosts/{OFF}", headers=viewer).json()
    assert host["state"] == "online", host
    after = submit(client, tokens.headers("operator"), duration_s=1, targets={"hosts": [OFF]})
    ok = wait_job(client, viewer, after["id"], job_final, 60, "a syscalls job on bt-off")
    assert ok["state"] == "succeeded", ok


# -- hostile names --------------------------------------------------------------------------------

HOSTILE = {  # comm (at most 15 bytes) -> getppid calls
    'a,b"c\\d\n\x1b[2J': 11,
    "x\ty\r\x07,z;": 13,
    "%s%n\x1b]0;pw\x07": 17,
}
# Not UTF-8: bpftrace 0.17 writes byte 0xff as the JSON escape "\uffffffff" (a "\uffff" and
# four "f"s once read), so only its readable start and its count can be checked.
NOT_UTF8, NOT_UTF8_CALLS = b"bad\xff\xfe{", 19


def test_hostile_comm_names_come_out_exact_and_print_inert(
    fleet: dict[str, Any],
    workload: StartWorkload,
    client: TestClient,
    tokens: Tokens,
    cli_for: Callable[[TestClient, str], Cli],
) -> None:
    hostile = [workload("bt-a", getppid_calls(n), comm=name) for name, n in HOSTILE.items()]
    hostile.append(workload("bt-a", getppid_calls(NOT_UTF8_CALLS), comm=NOT_UTF8))
    job = bpftrace_job(client, tokens, COUNT, ["bt-a"])
    done = run_job(client, tokens, job, hostile)
    assert done["state"] == "succeeded", done
    rows = table_rows(
        named(host_results(results(client, tokens, job["id"]))["bt-a"], "counter_table", "@")
    )
    (odd,) = [key for key in rows if key.startswith("bad")]
    assert rows.pop(odd) == NOT_UTF8_CALLS and odd.endswith("{"), odd
    # the agent escapes what the host named (node_agent.safe_text), each count exact
    assert rows == {printable(name): n for name, n in HOSTILE.items()}, rows
    code, out, err = cli_for(client, tokens.token("viewer"))("jobs", "results", job["id"])
    assert code == 0, err
    assert not RAW_CONTROL.search(out), out
    for name, n in HOSTILE.items():
        (line,) = [line for line in out.splitlines() if printable(name) in line]
        assert str(n) in line, (name, out)


# -- schedules and trends -------------------------------------------------------------------------


@pytest.fixture
def scheduler_tick_s() -> float:
    return 0.1


def test_a_schedule_runs_bpftrace_and_trends_its_count_per_host(
    fleet: dict[str, Any],
    workload: StartWorkload,
    client: TestClient,
    tokens: Tokens,
    scheduler: Scheduler,
) -> None:
    # bt-b calls getppid five times as often as bt-a.
    for host, per_tick in (("bt-a", 1), ("bt-b", 5)):
        ticker = workload(host, f"while True:\n    {'os.getppid(); ' * per_tick}time.sleep(0.01)\n")
        ticker.go()
    admin, viewer = tokens.headers("admin"), tokens.headers("viewer")
    body = {
        "name": f"bt-{uuid.uuid4().hex[:6]}",
        "interval_s": 3.0,
        "allow_overlap": True,
        "template": {
            "program": "bpftrace",
            "params": {"script": COUNT},
            "duration_s": 2,
            "targets": {"hosts": ["bt-a", "bt-b"]},
        },
    }
    answer = client.post("/v1/schedules", json=body, headers=admin)
    assert answer.status_code == 201, answer.text
    url = f"/v1/schedules/{answer.json()['id']}"

    def two_done() -> list[dict[str, Any]] | None:
        fired = [f for f in client.get(url, headers=viewer).json()["recent"] if f["job_id"]]
        jobs = [get_job(client, viewer, f["job_id"]) for f in fired]
        done = [j for j in jobs if job_final(j)]
        return done if len(done) >= 2 else None

    jobs = wait_for(two_done, 60, "two scheduled bpftrace jobs to finish", every_s=0.2)
    client.post(f"{url}/pause", headers=admin)
    for job in jobs:
        assert job["state"] == "succeeded", job
        assert sorted(runs_by_host(job)) == ["bt-a", "bt-b"]
    answer = client.get(f"{url}/trend", params={"metric": "count:@"}, headers=viewer)
    assert answer.status_code == 200, answer.text
    trend = answer.json()
    assert [s["host"] for s in trend["series"]] == ["bt-a", "bt-b"], trend
    done_ids = {j["id"] for j in jobs}
    points = {
        s["host"]: {p["job_id"]: p["value"] for p in s["points"] if p["job_id"] in done_ids}
        for s in trend["series"]
    }
    for job in jobs:  # each point is the job's own total for the host
        per_host = host_results(results(client, tokens, job["id"]))
        for host in ("bt-a", "bt-b"):
            total = sum(table_rows(named(per_host[host], "counter_table", "@")).values())
            assert points[host][job["id"]] == total > 0, (host, job["id"], points)
        assert points["bt-b"][job["id"]] > points["bt-a"][job["id"]], points
