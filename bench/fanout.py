"""One job to 1,000 emulated agents: time from POST until every run is final and merged.

The stack is real (redis-server with auth on a unix socket, a migrated SQLite or PostgreSQL
database, `fleettrace serve` = API + ingest); the hosts are added through the API, each
getting its own Redis identity (an ACL user); the fleet is ONE process whose threads pop
the controller's real Celery task messages from the 1,000 queues host.h0000 ... host.h0999
(BLMPOP over a slice each: see emulate() for why not one Celery worker), verify each with the
agent's own Gate (signature, host, expiry, replay) and answer like an agent does, through
the agent's own EventPublisher on the host's own stream with the host's own identity:
StateChange running, one final Snapshot (a 5-row counter table and a 64-bucket log2
histogram), StateChange succeeded. The hosts came online by heartbeating with this
machine's real capability probe, through the ingest path (which reads the 1,000 hosts'
streams).

Measured per job: POST (validate, N runs, N send_task), agents (until the fleet's last
event is XADDed), ingest (until the job is final in the database), then GET results (the
merge of N hosts, checked against the expected sums). Baseline in the same run: N bare
send_task calls plus the same 3N events as raw XADD on the N per-host streams + XREADGROUP
over them + XACK (no parsing, no database), i.e. the floor of moving this much work through
Redis from one client.

    .venv/bin/python bench/fanout.py [--hosts 1000] [--rounds 5] [--db sqlite|postgresql] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _main
import httpx
import redis
from _baselines import raw_streams
from _stack import BIN, add_host, controller, trusted_keys_file, wait_online
from sqlalchemy import func, select

from controller.cli.http import parse_sse
from controller.jobs.models import Job, Run
from devstack.harness import stop_process, task_envelope
from node_agent.protocol import (
    CounterTable,
    Heartbeat,
    HostCapabilities,
    KeyField,
    Log2Histogram,
    RunState,
    Snapshot,
    SnapshotStats,
    StateChange,
    StreamEnvelope,
    TraceRequest,
)
from node_agent.trust import Gate, SeenRuns, TrustedKeys
from node_agent.wire import TASK_RUN_TRACE, celery_config, client_url, events_stream, host_queue
from node_agent.worker import EventPublisher

PROGRAM = "syscalls"
SYSCALLS = ("read", "write", "openat", "close", "futex")
BUCKETS = 64


def host_name(i: int) -> str:
    return f"h{i:04d}"


# -- the emulated fleet (runs in its own process) -------------------------------------------------


def host_results(index: int) -> list[CounterTable | Log2Histogram]:
    """What emulated host `index` reports: known numbers, so the merge can be checked."""
    table = CounterTable(
        name="syscalls",
        key_fields=[KeyField(name="syscall")],
        rows=[([name], [(index + 1) * (k + 1)]) for k, name in enumerate(SYSCALLS)],
        total_rows=len(SYSCALLS),
    )
    hist = Log2Histogram(
        name="latency", unit="ns", buckets=[(slot, index + slot) for slot in range(BUCKETS)]
    )
    return [table, hist]


def expected_merge(hosts: int) -> tuple[int, int]:
    """(sum of the counter table, sum of the histogram) over the fleet."""
    table = sum((i + 1) * (k + 1) for i in range(hosts) for k in range(len(SYSCALLS)))
    hist = sum(i + slot for i in range(hosts) for slot in range(BUCKETS))
    return table, hist


def emulate(
    redis_url: str, hosts: int, concurrency: int, capabilities_file: Path, identities: Path
) -> None:
    """Every host's agent, answering like node_agent.worker does; each host publishes with
    its own identity (one Redis connection each, as real agents).

    A real agent is a Celery worker popping its one queue. Here `concurrency` threads each
    pop a slice of the queues with BLMPOP (one blocking call over the slice), as cheap per
    task as an agent's BRPOP: one Celery worker over all 1,000 queues instead spends most of
    its time re-sending a 1,000-key BRPOP after every task, a cost no real agent has. The
    messages are the controller's real Celery tasks; the tests run them through real agents.
    """
    caps = HostCapabilities.model_validate_json(capabilities_file.read_text())
    names = [host_name(i) for i in range(hosts)]
    urls: dict[str, str] = json.loads(identities.read_text())
    publishers = {
        name: EventPublisher(redis.Redis.from_url(client_url(urls[name])), name) for name in names
    }
    stop = threading.Event()

    def heartbeats() -> None:
        while not stop.is_set():
            for name in names:
                publishers[name].publish(
                    Heartbeat(host=name, agent_version="bench", capabilities=caps)
                )
            stop.wait(10.0)

    # Each emulated agent verifies its tasks as a real one does (the cost is part of the fan-out).
    gates = {
        name: Gate(
            host=name,
            keys=TrustedKeys(capabilities_file.parent / "controller-keys.pub"),
            seen=SeenRuns(capabilities_file.parent / "seen" / f"{name}.json"),
            skew_s=30.0,
        )
        for name in names
    }

    def run_trace(host: str, raw: bytes) -> None:
        task_id, envelope = task_envelope(raw)
        parsed = TraceRequest.model_validate(gates[host].admit_run(envelope).payload)
        if parsed.run_id != task_id:
            raise ValueError(f"task {task_id} carries run {parsed.run_id}")
        publish = publishers[host].publish
        started = time.time()
        publish(StateChange(run_id=parsed.run_id, state=RunState.running), job_id=parsed.job_id)
        snapshot = Snapshot(
            run_id=parsed.run_id,
            seq=0,
            interval_start=started,
            interval_end=time.time(),
            final=True,
            results=host_results(int(host[1:])),
            stats=SnapshotStats(compile_s=0.0, attach_s=0.0),
        )
        publish(snapshot, job_id=parsed.job_id)
        publish(StateChange(run_id=parsed.run_id, state=RunState.succeeded), job_id=parsed.job_id)

    def consume(queues: list[str]) -> None:
        # One consumer per slice of queues: the controller's identity (an agent has its own).
        client = redis.Redis.from_url(client_url(redis_url))
        while not stop.is_set():
            reply: Any = client.blmpop(1, len(queues), *queues, direction="RIGHT", count=1)
            if not reply:
                continue
            queue, messages = reply
            host = (queue.decode() if isinstance(queue, bytes) else queue).removeprefix("host.")
            for raw in messages:
                try:
                    run_trace(host, raw)
                except Exception as exc:  # an agent logs a refused task and goes on
                    print(f"emulated {host}: task refused: {exc}", file=sys.stderr, flush=True)

    queues = [host_queue(name) for name in names]
    slices = [queues[i::concurrency] for i in range(concurrency)]
    threading.Thread(target=heartbeats, daemon=True).start()
    threads = [threading.Thread(target=consume, args=(q,), daemon=True) for q in slices if q]
    for thread in threads:
        thread.start()
    try:
        stop.wait()  # until the bench stops this process
    finally:
        stop.set()


# -- the benchmark --------------------------------------------------------------------------------


@dataclass
class Round:
    """Seconds since the POST was sent, except `results` (a duration)."""

    job_id: str
    post: float  # POST returned (200 runs stored, 200 tasks sent)
    first_event: float  # the fleet's first event XADDed
    last_event: float  # the fleet's last event XADDed
    final: float  # the job final in the database (ingest stored every run's end)
    seen: float  # the client following the job's event stream saw it final
    total: float  # GET results returned the merge, checked
    results: float  # the GET /v1/jobs/{id}/results round trip
    cpu: dict[str, float]  # CPU seconds each role used during the round (tree_cpu)


@dataclass
class Baseline:
    send_task_s: float  # N bare send_task calls
    xadd_s: float  # 3N raw XADDs (the same envelopes)
    read_ack_s: float  # XREADGROUP + XACK of them, in batches of 200

    @property
    def total_s(self) -> float:
        return self.send_task_s + self.xadd_s + self.read_ack_s


def baseline(redis_url: str, hosts: int) -> Baseline:
    """The floor: the same messages through Redis from one client, nothing else."""
    from celery import Celery

    app = Celery("fleettrace-bench-baseline")
    app.conf.update(celery_config(redis_url))
    client = redis.Redis.from_url(client_url(redis_url))
    requests = [
        TraceRequest(run_id=f"bench-{i}", job_id="bench", program=PROGRAM, duration_s=1)
        for i in range(hosts)
    ]
    queues = [f"bench.q{i:03d}" for i in range(hosts)]  # nobody consumes these
    t0 = time.perf_counter()
    for queue, request in zip(queues, requests, strict=True):
        app.send_task(
            TASK_RUN_TRACE,
            args=[request.model_dump(mode="json")],
            queue=queue,
            routing_key=queue,
            expires=60,
            task_id=request.run_id,
        )
    send_s = time.perf_counter() - t0
    client.delete(*queues)
    payloads = []
    for i, request in enumerate(requests):
        host = host_name(i)
        now = time.time()
        for event in (
            StateChange(run_id=request.run_id, state=RunState.running),
            Snapshot(
                run_id=request.run_id,
                seq=0,
                interval_start=now,
                interval_end=now,
                final=True,
                results=host_results(i),
            ),
            StateChange(run_id=request.run_id, state=RunState.succeeded),
        ):
            payloads.append(
                StreamEnvelope(host=host, job_id="bench", event=event).model_dump_json()
            )
    streams = [f"bench:fanout:raw:{host_name(i)}" for i in range(hosts)]
    items = [(streams[i // 3], payload) for i, payload in enumerate(payloads)]
    # XREADGROUP's COUNT is per stream, as ingest asks
    xadd_s, read_s = raw_streams(client, items, per_stream=max(1, 200 // hosts))
    client.close()
    return Baseline(send_task_s=send_s, xadd_s=xadd_s, read_ack_s=read_s)


def job_events_span(client: redis.Redis, job_id: str, hosts: int) -> tuple[float, float]:
    """Redis's clock (entry ids) of the job's first and last event on the hosts' streams."""
    pipe = client.pipeline(transaction=False)
    for i in range(hosts):
        pipe.xrange(events_stream(host_name(i)))
    times = []
    for entries in pipe.execute():
        for entry_id, fields in entries:
            if json.loads(fields[b"data"]).get("job_id") == job_id:
                times.append(int(entry_id.split(b"-")[0]) / 1000)
    return (min(times), max(times)) if times else (0.0, 0.0)


ROLES = (
    ("--emulate", "fleet"),
    ("redis-server", "redis"),
    (" ingest", "ingest"),
    (" worker", "worker"),
    (" serve", "api"),
)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def tree_cpu() -> dict[str, float]:
    """CPU seconds (user + system) so far of this benchmark's processes, by role: what the
    API, ingest, the emulated fleet and Redis each cost, whatever the wall clock says."""
    tick = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    todo, seen = _children(os.getpid()), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo += _children(pid)
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        role = next((r for mark, r in ROLES if mark in command), None)
        if role is not None:
            used[role] = used.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return used


def one_round(api: httpx.Client, sessions: Any, client: redis.Redis, hosts: int) -> Round:
    body = {"program": PROGRAM, "duration_s": 1, "targets": {"all": True}}
    cpu_before = tree_cpu()
    t0 = time.time()
    resp = api.post("/v1/jobs", json=body)
    t_post = time.time()
    resp.raise_for_status()
    job_id = resp.json()["id"]
    if len(resp.json()["runs"]) != hosts:
        raise RuntimeError(f"job has {len(resp.json()['runs'])} runs, not {hosts}")
    # Followed as `fleettrace jobs submit --wait` does: the job's event stream, to its end.
    timeout = httpx.Timeout(30, read=120)
    with api.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as events:
        events.raise_for_status()
        for event in parse_sse(events.iter_lines()):
            if event.event == "end" or (event.event == "job" and event.data.get("state")):
                break
    t_seen = time.time()
    state = api.get(f"/v1/jobs/{job_id}").json()["state"]
    if state != "succeeded":
        raise RuntimeError(f"job {job_id} ended {state}")
    results = api.get(f"/v1/jobs/{job_id}/results")
    t_done = time.time()
    results.raise_for_status()
    check_merge(results.json(), hosts)
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.finished_at is not None
        finished = job.finished_at.timestamp()
        not_succeeded = session.scalar(
            select(func.count()).where(Run.job_id == job_id, Run.state != "succeeded")
        )
        if not_succeeded:
            raise RuntimeError(f"{not_succeeded} runs did not succeed")
    first, last = job_events_span(client, job_id, hosts)
    return Round(
        job_id=job_id,
        post=t_post - t0,
        first_event=first - t0,
        last_event=last - t0,
        final=finished - t0,
        seen=t_seen - t0,
        total=t_done - t0,
        results=t_done - t_seen,
        cpu={k: round(v - cpu_before.get(k, 0.0), 2) for k, v in tree_cpu().items()},
    )


def check_merge(doc: dict[str, Any], hosts: int) -> None:
    table_sum, hist_sum = expected_merge(hosts)
    if len(doc["hosts"]) != hosts or not all(h["final"] for h in doc["hosts"]):
        raise RuntimeError("results lack some host's final snapshot")
    merged = {r["kind"]: r for r in doc["merged"]}
    got_table = sum(v[0] for _, v in merged["counter_table"]["rows"])
    got_hist = sum(c for _, c in merged["log2_histogram"]["buckets"])
    if (got_table, got_hist) != (table_sum, hist_sum):
        raise RuntimeError(f"merge wrong: {(got_table, got_hist)} != {(table_sum, hist_sum)}")


@contextlib.contextmanager
def fleet(
    redis_url: str, hosts: int, concurrency: int, workdir: Path, log: Any, identities: Path
) -> Any:
    caps = workdir / "capabilities.json"
    probe = subprocess.run(
        [str(BIN / "fleettrace-agent"), "probe"], capture_output=True, text=True, check=False
    )
    if probe.returncode == 0:
        caps.write_text(probe.stdout)
    else:  # not root: a plausible host that can run tracepoint programs
        caps.write_text(
            HostCapabilities(
                kernel_release=os.uname().release,
                arch=os.uname().machine,
                bcc_version=None,
                headers="approximate",  # type: ignore[arg-type]
                features={"tracepoints": True},  # type: ignore[dict-item]
            ).model_dump_json()
        )
    trusted_keys_file(workdir)
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--emulate",
            "--redis-url",
            redis_url,
            "--hosts",
            str(hosts),
            "--concurrency",
            str(concurrency),
            "--capabilities",
            str(caps),
            "--identities",
            str(identities),
        ],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        stop_process(proc, timeout_s=30)


@contextlib.contextmanager
def _joined(base: str, admin: str, hosts: int, identities: Path, log: Any) -> Any:
    """The hosts added through the API; their identities (shown once) in a 0600 file."""
    t0 = time.perf_counter()
    names = [host_name(i) for i in range(hosts)]
    with ThreadPoolExecutor(8) as pool:
        added = pool.map(lambda name: add_host(base, admin, name), names)
        urls = dict(zip(names, added, strict=True))
    identities.touch(mode=0o600)
    identities.write_text(json.dumps(urls))
    log(f"{hosts} hosts added with their own Redis identities in {time.perf_counter() - t0:.1f} s")
    yield


def summarize(rounds: list[Round], bases: list[Baseline], meta: dict[str, Any]) -> dict[str, Any]:
    fields = ("post", "first_event", "last_event", "final", "seen", "total", "results")
    medians = {f: _main.median([getattr(r, f) for r in rounds]) for f in fields}
    base = {
        "send_task_s": _main.median([b.send_task_s for b in bases]),
        "xadd_s": _main.median([b.xadd_s for b in bases]),
        "read_ack_s": _main.median([b.read_ack_s for b in bases]),
        "total_s": _main.median([b.total_s for b in bases]),
    }
    return {
        "benchmark": "fanout",
        **meta,
        "target_s": 5.0,
        "median": medians,
        "baseline_median": base,
        "ratio_total_vs_floor": medians["total"] / base["total_s"],
        "rounds": [asdict(r) for r in rounds],
        "baseline": [{**asdict(b), "total_s": b.total_s} for b in bases],
    }


def print_table(summary: dict[str, Any]) -> None:
    print(
        f"\nfan-out: one {summary['program']} job to {summary['hosts']} emulated agents (one "
        f"process, {summary['concurrency']} threads), {summary['db']} database, "
        f"{len(summary['rounds'])} rounds; kernel {summary['kernel']}, {summary['cpus']} CPUs"
    )
    cols = ("post", "first_event", "last_event", "final", "seen", "total", "results")
    names = ("POST", "1st evt", "last evt", "final", "seen", "TOTAL", "results")
    head = f"{'':10}" + "".join(f"{c:>9}" for c in names)
    print(head + "   (s since POST sent; results: GET duration)")
    print("-" * len(head))
    rows = [(f"round {i + 1}", r) for i, r in enumerate(summary["rounds"])]
    for label, values in [*rows, ("median", summary["median"])]:
        if label == "median":
            print("-" * len(head))
        print(f"{label:10}" + "".join(f"{values[c]:9.3f}" for c in cols))
    roles = sorted({role for r in summary["rounds"] for role in r["cpu"]})
    print("\nCPU seconds per round (user + system), by process:")
    print(f"{'':10}" + "".join(f"{role:>9}" for role in roles) + f"{'sum':>9}")
    for i, r in enumerate(summary["rounds"]):
        used = [r["cpu"].get(role, 0.0) for role in roles]
        print(f"{f'round {i + 1}':10}" + "".join(f"{u:9.2f}" for u in used) + f"{sum(used):9.2f}")
    base = summary["baseline_median"]
    n = summary["hosts"]
    print(
        f"\nbaseline (same run, one client, no DB): {n} send_task {base['send_task_s']:.3f} s + "
        f"{3 * n} XADD {base['xadd_s']:.3f} s + XREADGROUP/XACK {base['read_ack_s']:.3f} s "
        f"= {base['total_s']:.3f} s"
    )
    print(f"ours / baseline: x{summary['ratio_total_vs_floor']:.1f}")
    total = summary["median"]["total"]
    verdict = "met" if total < summary["target_s"] else "NOT met"
    print(f"POST -> final and merged, median {total:.3f} s; target < 5 s: {verdict}")


def main() -> int:
    parser = _main.options(__doc__, rounds=5, rounds_help="jobs to time (median taken)", db=True)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8, help="emulator threads")
    parser.add_argument("--emulate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--capabilities", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--identities", type=Path, help=argparse.SUPPRESS)
    args, log = _main.start(parser)
    if args.emulate:
        emulate(args.redis_url, args.hosts, args.concurrency, args.capabilities, args.identities)
        return 0
    with controller("ft-bench-fanout-", args.db) as stack:
        workdir = stack.workdir
        identities = workdir / "identities.json"
        with (
            stack.readers() as (sessions, client),
            open(workdir / "fleet.log", "wb") as fleet_log,
            stack.serve() as base,
            _joined(base, stack.admin, args.hosts, identities, log),
            fleet(stack.redis_url, args.hosts, args.concurrency, workdir, fleet_log, identities),
            stack.api(base, timeout_s=60) as api,
        ):
            log(f"stack up ({args.db}); waiting for {args.hosts} hosts to heartbeat")
            wait_online(api, args.hosts)
            time.sleep(1.0)  # let the emulator's worker finish binding its queues
            rounds, bases = _main.side_by_side(
                args.rounds,
                lambda: one_round(api, sessions, client, args.hosts),
                lambda: baseline(stack.redis_url, args.hosts),
                log,
                lambda r, b: f"{r.total:.3f} s (baseline {b.total_s:.3f} s)",
            )
    meta = _main.machine(
        program=PROGRAM, hosts=args.hosts, concurrency=args.concurrency, db=args.db
    )
    return _main.finish(args, summarize(rounds, bases, meta), print_table)


if __name__ == "__main__":
    sys.exit(main())
