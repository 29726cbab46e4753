"""Time from POST /v1/jobs to the first stored snapshot, split by stage, next to bare bcc.

A real stack on unix sockets and 127.0.0.1: redis-server, a migrated SQLite (or PostgreSQL)
database, `fleettrace serve` (API + ingest), and one real `fleettrace-agent worker`. Each
job runs the `syscalls` program on that agent; the stages come from the clocks of the
processes involved (one machine, one clock):

  api       client sends POST -> the run's dispatched_at (auth, validation, the job and run
            rows; stamped just before the commit that precedes send_task)
  deliver   dispatched_at -> the agent's Celery "Task ... received" log line (commit,
            send_task, Redis, the worker's BRPOP)
  start     received -> compile begins (runner, child process, imports, prepare)
  compile   compile_s + attach_s from the snapshot's stats
  interval  attached -> first snapshot taken (the snapshot interval itself)
  publish   snapshot taken -> XADDed (child -> runner -> Redis; the stream entry id's time)
  store     XADDed -> stored (ingest read, parse, insert; the row's received_at)

overhead = total - compile - interval: what the orchestration adds. In the same run, a
bare `BPF(text=...)` of the same prepared source in a fresh python process (spawn to
attached) is the baseline for what reaching "attached" costs without us.

    sudo .venv/bin/python bench/submit_latency.py [--jobs 10] [--interval 1] [--json]
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _main
import httpx
import redis
from _baselines import bare_child
from _stack import add_host, agent_worker, controller, wait_online
from sqlalchemy import select

from controller.jobs.models import Run, SnapshotRow
from devstack.harness import wait_for
from node_agent.protocol import StreamEnvelope, TraceRequest
from node_agent.trace import prepare
from node_agent.wire import events_stream

HOST = "bench-1"
PROGRAM = "syscalls"
STAGES = ("api", "deliver", "start", "compile", "interval", "publish", "store")

# Runs in a fresh interpreter: import bcc, load (tracepoints attach on load), report times.
BARE_SCRIPT = r"""
import json, sys, time
t0 = time.monotonic()
cfg = json.loads(sys.stdin.read())
from bcc import BPF
t1 = time.monotonic()
b = BPF(text=cfg["source"], cflags=cfg["cflags"])
t2 = time.monotonic()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1}))
sys.stdout.flush()
b.cleanup()
"""

# The agent's log: "2026-11-25 03:21:00,123 celery.worker.strategy INFO Task X[RUN_ID] received"
_RECEIVED = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*Task \S+\[([0-9a-f-]+)\] received"
)


@dataclass
class JobSample:
    job_id: str
    post_rtt: float  # the client's whole POST round trip (overlaps deliver)
    total: float  # POST sent -> first snapshot stored
    api: float
    deliver: float | None
    start: float | None
    compile: float
    interval: float
    publish: float
    store: float
    overhead: float  # total - compile - interval
    to_attached: float  # dispatched -> attached: ours, to compare with bare spawn -> loaded


@dataclass
class BareSample:
    wall_s: float  # spawn -> loaded
    import_s: float
    load_s: float


def run_bare(cfg: str) -> BareSample:
    wall, line, err = bare_child(BARE_SCRIPT, cfg, timeout_s=120)
    if not line.strip():
        raise RuntimeError(f"bare bcc load failed: {err.strip()[-500:]}")
    data = json.loads(line)
    return BareSample(wall_s=wall, import_s=data["import_s"], load_s=data["load_s"])


def bare_config() -> str:
    prepared = prepare(TraceRequest(run_id="bench-bare", program=PROGRAM, duration_s=1))
    return json.dumps({"source": prepared.source, "cflags": prepared.cflags})


def received_times(log_path: Path) -> dict[str, float]:
    """Celery's 'Task ... received' per task id (= run id), as epoch seconds."""
    found: dict[str, float] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        m = _RECEIVED.match(line)
        if m:
            local = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
            found[m.group(3)] = local + int(m.group(2)) / 1000
    return found


def stream_times(client: redis.Redis, run_id: str, host: str = HOST) -> dict[str, Any]:
    """The agent's own clocks for a run, from the events stream: running.at and XADD times."""
    out: dict[str, Any] = {}
    for entry_id, fields in client.xrange(events_stream(host)):
        envelope = StreamEnvelope.model_validate_json(fields[b"data"])
        event = envelope.event
        if getattr(event, "run_id", None) != run_id:
            continue
        added = int(entry_id.split(b"-")[0]) / 1000  # the entry id is Redis's clock in ms
        if event.type == "snapshot" and event.seq == 0:
            out["snapshot_added"] = added
        elif event.type == "state" and event.state.value == "running":
            out["running_at"] = event.at
    return out


def one_job(
    api: httpx.Client,
    sessions: Any,
    client: redis.Redis,
    agent_log: Path,
    duration: float,
    interval: float,
    host: str = HOST,
) -> JobSample:
    body = {
        "program": PROGRAM,
        "duration_s": duration,
        "interval_s": interval,
        "targets": {"hosts": [host]},
    }
    t0 = time.time()
    resp = api.post("/v1/jobs", json=body)
    t1 = time.time()
    resp.raise_for_status()
    job = resp.json()
    job_id, run_id = job["id"], job["runs"][0]["id"]
    # Stay off the API (it shares a process with ingest) until the trace is surely over.
    time.sleep(max(0.0, t0 + duration + 0.3 - time.time()))

    def final() -> bool:
        state = api.get(f"/v1/jobs/{job_id}").json()["state"]
        if state not in ("pending", "running", "succeeded"):
            raise RuntimeError(f"job {job_id} ended {state}")
        return bool(state == "succeeded")

    wait_for(final, 60, f"job {job_id}", every_s=0.1)
    with sessions() as session:
        run = session.get(Run, run_id)
        snap = session.scalar(
            select(SnapshotRow).where(SnapshotRow.run_id == run_id, SnapshotRow.seq == 0)
        )
        assert run is not None and run.dispatched_at is not None and snap is not None
        if snap.final:
            raise RuntimeError("the first snapshot is the final one: use a longer --duration")
        dispatched = run.dispatched_at.timestamp()
        stored = snap.received_at.timestamp()
        compile_s = float(snap.stats["compile_s"]) + float(snap.stats["attach_s"])
        attached, taken = snap.interval_start, snap.interval_end
    agent = stream_times(client, run_id, host)
    received = received_times(agent_log).get(run_id)
    load_begin = attached - compile_s
    total = stored - t0
    interval_s = taken - attached
    return JobSample(
        job_id=job_id,
        post_rtt=t1 - t0,
        total=total,
        api=dispatched - t0,
        deliver=None if received is None else received - dispatched,
        start=None if received is None else load_begin - received,
        compile=compile_s,
        interval=interval_s,
        publish=agent["snapshot_added"] - taken,
        store=stored - agent["snapshot_added"],
        overhead=total - compile_s - interval_s,
        to_attached=attached - dispatched,
    )


def summarize(
    samples: list[JobSample], bare: list[BareSample], meta: dict[str, Any]
) -> dict[str, Any]:
    medians = {
        name: _main.median([getattr(s, name) for s in samples])
        for name in ("post_rtt", "total", *STAGES, "overhead", "to_attached")
    }
    bare_med = {
        name: _main.median([getattr(b, name) for b in bare]) for name in ("wall_s", "load_s")
    }
    ratios: dict[str, float | None] = {}
    if medians["to_attached"] and bare_med["wall_s"]:
        ratios["to_attached_vs_bare_wall"] = medians["to_attached"] / bare_med["wall_s"]
    if medians["compile"] and bare_med["load_s"]:
        ratios["compile_vs_bare_load"] = medians["compile"] / bare_med["load_s"]
    return {
        "benchmark": "submit_latency",
        **meta,
        "target_overhead_s": 0.1,
        "median": medians,
        "bare_median": bare_med,
        "ratios": ratios,
        "samples": [asdict(s) for s in samples],
        "bare": [asdict(b) for b in bare],
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:7.1f}"


def print_table(summary: dict[str, Any]) -> None:
    print(
        f"\nsubmit latency: {summary['program']} on one real agent, "
        f"{summary['duration_s']:g}s trace, {summary['interval_s']:g}s interval, "
        f"{summary['db']} database, median of"
        f" {len(summary['samples'])} jobs; kernel {summary['kernel']}, {summary['cpus']} CPUs"
    )
    cols = ("total", *STAGES, "overhead")
    head = f"{'':10}" + "".join(f"{c:>9}" for c in cols) + f"{'POST rtt':>9}"
    print(head + "   (ms)")
    print("-" * len(head))
    rows: list[tuple[str, dict[str, Any]]] = [
        (f"job {i + 1}", s) for i, s in enumerate(summary["samples"])
    ]
    rows.append(("median", summary["median"]))
    for label, values in rows:
        if label == "median":
            print("-" * len(head))
        print(
            f"{label:10}"
            + "".join(f"{_ms(values[c]):>9}" for c in cols)
            + f"{_ms(values['post_rtt']):>9}"
        )
    med, bare = summary["median"], summary["bare_median"]
    print(
        f"\nbare bcc (fresh python + BPF(text=...), same source): spawn->attached "
        f"{_ms(bare['wall_s']).strip()} ms, BPF() {_ms(bare['load_s']).strip()} ms"
    )
    print(
        f"ours: dispatched->attached {_ms(med['to_attached']).strip()} ms "
        f"(x{summary['ratios'].get('to_attached_vs_bare_wall', 0):.2f} of bare spawn->attached), "
        f"compile+attach x{summary['ratios'].get('compile_vs_bare_load', 0):.2f} of bare BPF()"
    )
    verdict = "met" if med["overhead"] is not None and med["overhead"] < 0.1 else "NOT met"
    print(
        "orchestration overhead (total - compile - interval) median "
        f"{_ms(med['overhead']).strip()} ms; target < 100 ms: {verdict}"
    )


def main() -> int:
    parser = _main.options(__doc__, db=True)
    parser.add_argument("--jobs", type=int, default=10, help="jobs to time (median taken)")
    parser.add_argument("--interval", type=float, default=1.0, help="snapshot interval, s")
    parser.add_argument("--duration", type=float, default=2.0, help="trace duration, s")
    args, log = _main.start(parser, root=True)
    if args.duration <= args.interval:
        print("--duration must be longer than --interval", file=sys.stderr)
        return 2
    cfg = bare_config()
    with controller("ft-bench-submit-", args.db) as stack:
        workdir = stack.workdir
        agent_log = workdir / "agent.log"
        with (
            stack.readers() as (sessions, client),
            open(agent_log, "wb") as agent_out,
            stack.serve() as base,
            # The host joins with its own Redis identity, as in production.
            agent_worker(HOST, add_host(base, stack.admin, HOST), agent_out, workdir),
            stack.api(base, timeout_s=30) as api,
        ):
            log(f"stack up ({args.db}); waiting for {HOST}'s first heartbeat")
            wait_online(api, 1)
            run_bare(cfg)  # warm the page cache (libbcc, LLVM, headers)
            samples, bare = _main.side_by_side(
                args.jobs,
                lambda: one_job(api, sessions, client, agent_log, args.duration, args.interval),
                lambda: run_bare(cfg),
                log,
                lambda s, b: (
                    f"total {s.total * 1000:.0f} ms, overhead {s.overhead * 1000:.0f} ms; "
                    f"bare {b.wall_s * 1000:.0f} ms"
                ),
            )
    meta = _main.machine(
        program=PROGRAM, duration_s=args.duration, interval_s=args.interval, db=args.db
    )
    return _main.finish(args, summarize(samples, bare, meta), print_table)


if __name__ == "__main__":
    sys.exit(main())
