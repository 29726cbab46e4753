"""Snapshots per second stored by the ingest consumer, next to raw Redis stream throughput.

A real redis-server (unix socket) and a real database, migrated: SQLite, and PostgreSQL 15
(a throwaway cluster run as the postgres user, durable defaults) when its binaries are
there. 1,000 hosts each have a running run; every snapshot is what such a host sends every
second: one 64-bucket log2 histogram, cumulative. Per database, in the same run:

  raw     the same payloads on per-host streams: XADD one by one (as agents do), then
          XREADGROUP over the 1,000 streams + XACK per stream (pipelined), as many per stream
          as Ingest asks for: the most a single consumer could move, no parsing, no DB
  drain   a backlog of --snapshots entries on the hosts' own streams (fleettrace:events:<host>),
          consumed by controller.ingest.consumer.Ingest.step() until all are stored
  paced   a producer process XADDs --rate snapshots/s for --seconds while Ingest runs;
          the backlog (produced - stored) is sampled: keeping up means it stays bounded

Target: keep up with 1,000 hosts x one 64-bucket histogram per second = 1,000 snapshots/s.

    .venv/bin/python bench/ingest_rate.py [--snapshots 5000] [--rounds 3] [--db sqlite,postgresql]
                                          [--rate 1000] [--seconds 10] [--profile] [--json]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing
import pstats
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import _main
import redis
from _baselines import raw_streams
from _stack import migrated_sqlite, postgres_server, redis_server
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from controller.db import make_engine, make_sessionmaker
from controller.hosts.models import Host
from controller.ingest.consumer import Ingest
from controller.jobs.models import Job, Run, SnapshotRow
from controller.migrate import upgrade
from controller.settings import Settings
from devstack.harness import PG_BIN
from node_agent.protocol import Log2Histogram, RunState, Snapshot, SnapshotStats, StreamEnvelope
from node_agent.wire import client_url, events_stream

HOSTS = 1000
BUCKETS = 64


@dataclass
class Fleet:
    job_id: str
    runs: list[tuple[str, str]]  # (host, run_id)


def make_fleet(sessions: sessionmaker[Session], hosts: int) -> Fleet:
    """Hosts and one running job with a run on each, as if dispatched and started."""
    now = datetime.now(timezone.utc)
    job_id = str(uuid.uuid4())
    runs = [(f"h{i:04d}", str(uuid.uuid4())) for i in range(hosts)]
    with sessions() as session:
        session.add_all(Host(name=h, labels={}, last_heartbeat=now) for h, _ in runs)
        job = Job(
            id=job_id,
            program="runqlat",
            duration_s=3600,
            interval_s=1.0,
            state="running",
            created_at=now,
        )
        session.add(job)
        session.add_all(
            Run(
                id=run_id,
                job=job,
                host_name=host,
                state=RunState.running.value,
                created_at=now,
                started_at=now,
            )
            for host, run_id in runs
        )
        session.commit()
    return Fleet(job_id=job_id, runs=runs)


def payload(job_id: str, host: str, run_id: str, seq: int) -> str:
    """One host's cumulative snapshot number `seq`: a 64-bucket histogram, as JSON."""
    now = time.time()
    base = (seq + 1) * 1000
    hist = Log2Histogram(
        name="runqlat",
        unit="us",
        buckets=[(slot, base + slot * 37 + len(host)) for slot in range(BUCKETS)],
    )
    snap = Snapshot(
        run_id=run_id,
        seq=seq,
        interval_start=now - 1,
        interval_end=now,
        results=[hist],
        stats=SnapshotStats(compile_s=0.21, attach_s=0.001, agent_cpu_s=0.3, peak_rss_mb=153),
    )
    return StreamEnvelope(host=host, job_id=job_id, event=snap).model_dump_json()


Item = tuple[str, str]  # (host, envelope JSON)


def payloads(fleet: Fleet, first_seq: int, count: int) -> list[Item]:
    """`count` snapshots, host by host within each second, as a fleet sends them."""
    out: list[Item] = []
    seq = first_seq
    while len(out) < count:
        for host, run_id in fleet.runs:
            out.append((host, payload(fleet.job_id, host, run_id, seq)))
            if len(out) == count:
                break
        seq += 1
    return out


# -- the three measurements -----------------------------------------------------------------------


@dataclass
class Raw:
    xadd_per_s: float
    read_ack_per_s: float
    both_per_s: float  # n / (xadd time + read time)


def measure_raw(client: redis.Redis, data: list[Item], batch: int) -> Raw:
    items = [(f"bench:ingest:raw:{host}", payload) for host, payload in data]
    streams = len({host for host, _ in data})
    # XREADGROUP's COUNT is per stream
    xadd_s, read_s = raw_streams(client, items, per_stream=max(1, batch // streams))
    n = len(data)
    return Raw(n / xadd_s, n / read_s, n / (xadd_s + read_s))


def fill(client: redis.Redis, data: list[Item]) -> None:
    """A backlog on the hosts' real streams, written fast (pipelined): the drain is timed."""
    for start in range(0, len(data), 500):
        pipe = client.pipeline(transaction=False)
        for host, item in data[start : start + 500]:
            pipe.xadd(events_stream(host), {"data": item})
        pipe.execute()


def measure_drain(ingest: Ingest, n: int, profile: cProfile.Profile | None) -> float:
    """Seconds for Ingest.step() to store a backlog of n entries."""
    before = ingest.stored
    t0 = time.perf_counter()
    if profile is not None:
        profile.enable()
    while ingest.stored - before < n:
        if ingest.step(block_ms=1000) == 0:
            raise RuntimeError(f"ingest stopped after {ingest.stored - before} of {n}")
    if profile is not None:
        profile.disable()
    return time.perf_counter() - t0


def produce(
    redis_url: str, data: list[Item], rate: float, produced: Any, done: Any
) -> None:  # pragma: no cover - runs in its own process
    """XADD at `rate` per second in 10 ms ticks, one entry per call on its host's stream."""
    client = redis.Redis.from_url(client_url(redis_url))
    t0 = time.monotonic()
    sent = 0
    while sent < len(data):
        due = min(len(data), int((time.monotonic() - t0) * rate) + 1)
        while sent < due:
            host, item = data[sent]
            client.xadd(events_stream(host), {"data": item})
            sent += 1
        produced.value = sent
        time.sleep(0.01)
    done.value = 1


@dataclass
class Paced:
    rate: float
    seconds: float
    produced_per_s: float  # what the producer achieved
    stored_per_s: float  # stored during the production window
    max_backlog: int  # produced - stored, worst sample (every 0.1 s)
    backlog_at_end: int
    drain_after_s: float  # after the producer stopped, until all were stored
    kept_up: bool


def measure_paced(ingest: Ingest, redis_url: str, data: list[Item], rate: float) -> Paced:
    ctx = multiprocessing.get_context("spawn")
    produced = ctx.Value("q", 0)
    done = ctx.Value("i", 0)
    base = ingest.stored
    stop = threading.Event()
    samples: list[int] = []

    def sample() -> None:
        while not stop.wait(0.1):
            samples.append(int(produced.value) - (ingest.stored - base))

    proc = ctx.Process(target=produce, args=(redis_url, data, rate, produced, done))
    proc.start()
    sampler = threading.Thread(target=sample, daemon=True)
    try:
        t0 = time.perf_counter()
        sampler.start()
        while not done.value:
            ingest.step(block_ms=100)
        t_end = time.perf_counter()
        stored_at_end = ingest.stored - base
        while ingest.stored - base < len(data):
            if ingest.step(block_ms=2000) == 0:
                raise RuntimeError("ingest stopped before the paced backlog was stored")
        t_drained = time.perf_counter()
    finally:
        stop.set()
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=10)
    window = t_end - t0
    backlog_end = len(data) - stored_at_end
    max_backlog = max([*samples, backlog_end])
    drain = t_drained - t_end
    return Paced(
        rate=rate,
        seconds=window,
        produced_per_s=len(data) / window,
        stored_per_s=stored_at_end / window,
        max_backlog=max_backlog,
        backlog_at_end=backlog_end,
        drain_after_s=drain,
        # Bounded: never more than ~1 s of traffic behind, and caught up within a second.
        kept_up=max_backlog <= rate and drain <= 1.0,
    )


# -- one database ---------------------------------------------------------------------------------


@dataclass
class DbResult:
    db: str
    raw: list[Raw] = field(default_factory=list)
    drain_per_s: list[float] = field(default_factory=list)
    paced: Paced | None = None
    stored_rows: int = 0
    expected_rows: int = 0
    profile: str | None = None


def bench_db(
    name: str,
    database_url: str,
    redis_url: str,
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> DbResult:
    upgrade(database_url)
    settings = Settings(database_url=database_url, redis_url=redis_url)
    engine = make_engine(database_url)
    client = redis.Redis.from_url(client_url(redis_url))
    result = DbResult(db=name)
    try:
        client.flushall()
        sessions = make_sessionmaker(engine)
        fleet = make_fleet(sessions, HOSTS)
        ingest = Ingest(settings, sessions, client)
        ingest.ensure_group()
        per_round = -(-args.snapshots // HOSTS)  # seqs one round uses
        # Warm-up: one snapshot per host (imports, caches, the first pages of each table).
        fill(client, payloads(fleet, 0, HOSTS))
        measure_drain(ingest, HOSTS, None)
        seq = 1
        profile = cProfile.Profile() if args.profile else None
        for r in range(args.rounds):
            data = payloads(fleet, seq, args.snapshots)
            seq += per_round
            raw = measure_raw(client, data, settings.ingest_batch)
            fill(client, data)
            rate = args.snapshots / measure_drain(ingest, args.snapshots, profile)
            result.raw.append(raw)
            result.drain_per_s.append(rate)
            log(
                f"{name} round {r + 1}/{args.rounds}: ingest {rate:,.0f}/s; raw XADD "
                f"{raw.xadd_per_s:,.0f}/s, XREADGROUP+XACK {raw.read_ack_per_s:,.0f}/s"
            )
        if profile is not None:
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(35)
            result.profile = out.getvalue()
        if args.seconds > 0:
            n = int(args.rate * args.seconds)
            data = payloads(fleet, seq, n)
            result.paced = measure_paced(ingest, redis_url, data, args.rate)
            p = result.paced
            log(
                f"{name} paced {args.rate:,.0f}/s for {p.seconds:.1f} s: stored "
                f"{p.stored_per_s:,.0f}/s, max backlog {p.max_backlog}, "
                f"drained {p.drain_after_s:.2f} s after the end"
            )
        with sessions() as session:
            result.stored_rows = int(session.scalar(select(func.count(SnapshotRow.id))) or 0)
        result.expected_rows = ingest.stored
        if result.stored_rows != result.expected_rows:
            raise RuntimeError(f"{result.stored_rows} rows stored, {ingest.stored} reported")
    finally:
        client.close()
        engine.dispose()
    return result


def summarize_db(r: DbResult) -> dict[str, Any]:
    drain = statistics.median(r.drain_per_s)
    raw_read = statistics.median(x.read_ack_per_s for x in r.raw)
    return {
        "db": r.db,
        "ingest_per_s": drain,
        "ingest_per_s_all": r.drain_per_s,
        "raw_xadd_per_s": statistics.median(x.xadd_per_s for x in r.raw),
        "raw_read_ack_per_s": raw_read,
        "raw_both_per_s": statistics.median(x.both_per_s for x in r.raw),
        "ingest_vs_raw_read": drain / raw_read,
        "paced": asdict(r.paced) if r.paced else None,
        "rows_stored": r.stored_rows,
        "meets_1000_per_s": drain >= 1000 and (r.paced is None or r.paced.kept_up),
    }


def print_table(summary: dict[str, Any]) -> None:
    print(
        f"\ningest rate: {HOSTS} hosts, snapshots of one {BUCKETS}-bucket histogram, backlog of "
        f"{summary['snapshots']} per round, median of {summary['rounds']} rounds, batch "
        f"{summary['ingest_batch']}; kernel {summary['kernel']}, {summary['cpus']} CPUs"
    )
    head = (
        f"{'database':11} {'ingest/s':>9} | {'raw XADD/s':>10} {'read+ack/s':>10} "
        f"{'both/s':>8} | {'x read':>6} | {'paced':>6} {'stored/s':>8} {'max bl':>6} "
        f"{'drain s':>7} {'kept up':>7}"
    )
    print(head)
    print("-" * len(head))
    for d in summary["databases"]:
        p = d["paced"]
        paced = (
            f"{p['rate']:6.0f} {p['stored_per_s']:8.0f} {p['max_backlog']:6d} "
            f"{p['drain_after_s']:7.2f} {'yes' if p['kept_up'] else 'NO':>7}"
            if p
            else f"{'-':>6} {'-':>8} {'-':>6} {'-':>7} {'-':>7}"
        )
        print(
            f"{d['db']:11} {d['ingest_per_s']:9,.0f} | {d['raw_xadd_per_s']:10,.0f} "
            f"{d['raw_read_ack_per_s']:10,.0f} {d['raw_both_per_s']:8,.0f} | "
            f"{d['ingest_vs_raw_read']:6.3f} | {paced}"
        )
    print(
        "ingest/s: backlog drained by Ingest.step() (parse, store, event log, commit, ack);\n"
        "raw: the same payloads on the same 1,000 per-host streams, XADD one by one /\n"
        "XREADGROUP over all streams + XACK, one client, no DB;\n"
        "x read: ingest / raw read+ack; paced: a producer at that rate, max backlog sampled every"
        " 0.1 s."
    )
    for d in summary["databases"]:
        verdict = "met" if d["meets_1000_per_s"] else "NOT met"
        print(f"{d['db']}: target 1,000 snapshots/s sustained: {verdict}")
    for name, text in summary.get("profiles", {}).items():
        print(f"\ncProfile of the {name} drain (cumulative):\n{text}")


def main() -> int:
    parser = _main.options(__doc__, rounds=3)
    parser.add_argument("--snapshots", type=int, default=5000, help="backlog per round")
    parser.add_argument("--db", default="sqlite,postgresql", help="comma-separated")
    parser.add_argument("--rate", type=float, default=1000.0, help="paced producer, per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="paced run length (0: skip)")
    parser.add_argument("--profile", action="store_true", help="cProfile the drains")
    args = parser.parse_args()
    kinds = [k for k in args.db.split(",") if k]
    log = _main.progress(args)

    notes: list[str] = []
    if "postgresql" in kinds and not (PG_BIN / "initdb").exists():
        kinds.remove("postgresql")
        notes.append(f"PostgreSQL skipped: no {PG_BIN / 'initdb'}")
    results: list[DbResult] = []
    with _main.scratch("ft-bench-ingest-") as workdir, ExitStack() as stack:
        redis_url = stack.enter_context(redis_server(workdir))
        for kind in kinds:
            if kind == "sqlite":
                url = migrated_sqlite(workdir, "ingest.db")
            else:
                url = stack.enter_context(postgres_server(workdir))()
            results.append(bench_db(kind, url, redis_url, args, log))
    summary = _main.machine(
        benchmark="ingest_rate",
        hosts=HOSTS,
        buckets=BUCKETS,
        snapshots=args.snapshots,
        rounds=args.rounds,
        ingest_batch=Settings().ingest_batch,
    )
    summary["notes"] = notes
    summary["databases"] = [summarize_db(r) for r in results]
    if args.profile:
        summary["profiles"] = {r.db: r.profile for r in results if r.profile}

    def table_and_notes(summary: dict[str, Any]) -> None:
        print_table(summary)
        for note in notes:
            print(note)

    return _main.finish(args, summary, table_and_notes)


if __name__ == "__main__":
    sys.exit(main())
