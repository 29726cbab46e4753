"""Time a job report over a large fleet, from a real database, JSON and HTML.

1,000 hosts x 8 log2 histograms x 64 buckets, plus one 10,000-row counter table per host
(keys (comm, path) drawn from a shared pool of --pool keys, so hosts overlap as a real fleet
does; --pid adds a per-host pid field, which the report projects away). A few hosts are made
slow on purpose. Each host's final snapshot is stored as the ingest stores it: the raw
snapshot row plus the run's digest (controller.reports.store.put).

Timed, median of --rounds, after the database is written:

  read    store.report_input: the runs, their latest seqs and spans, the digests decoded
  build   service.build: stats, metrics, fleet grouping, MAD / JS outliers, one-host keys
  json    JobReport.model_dump_json
  html    render_html
  GET     the API end to end (TestClient, token check, FastAPI serialization):
          /v1/jobs/{id}/report and ?format=html

Baseline in the same run: job_results, the raw snapshots read, parsed and merged, which is
where a report had to start before digests (and what GET /v1/jobs/{id}/results still does).
The ingest side is reported too: the digest's cost per final snapshot next to storing the
snapshot itself.

Targets (issue 5): JSON under 1 s, HTML under 3 s.

    .venv/bin/python bench/report.py [--hosts 1000] [--rows 10000] [--pool 10200] [--pid]
                                     [--rounds 3] [--db sqlite|postgres] [--no-baseline]
                                     [--json]
"""

from __future__ import annotations

import json
import math
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _main
from _stack import create_token, database
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from controller.app import create_app
from controller.cli.server import GC_YOUNG, tune_gc
from controller.db import make_engine, make_sessionmaker
from controller.jobs.models import Job, JobState, Run, SnapshotRow
from controller.jobs.results import job_results
from controller.reports import service, store
from controller.reports.render_html import render_html
from controller.settings import Settings
from node_agent.protocol import CounterTable, KeyField, KeyValue, Log2Histogram, Result, RunState

HISTOGRAMS = 8
BUCKETS = 64


def host_results(
    h: int, rows: int, keys: list[tuple[str, str]], pid: bool, rng: random.Random
) -> list[Result]:
    """One host's results, as the ingest has them after parsing a snapshot."""
    slow = h % 250 == 17  # 4 odd hosts in 1,000
    models: list[Result] = []
    for n in range(HISTOGRAMS):
        shift = 6 if slow else 0
        # A smooth shape around slot 10 (16 slower on odd hosts), +-10 % noise per bucket.
        buckets = [
            (s, 1 + int(1000 * math.exp(-((s - 10 - shift) ** 2) / 8) * rng.uniform(0.9, 1.1)))
            for s in range(BUCKETS)
        ]
        models.append(
            Log2Histogram.model_construct(
                kind="log2_histogram", name=f"lat{n}", unit="usec", labels={}, buckets=buckets
            )
        )
    if rows:
        fields = [KeyField(name="comm"), KeyField(name="path", type="path")]
        if pid:
            fields.insert(0, KeyField(name="pid", type="int"))
        start = rng.randrange(len(keys))
        table: list[tuple[list[KeyValue], list[int]]] = []
        for i in range(rows):
            comm, path = keys[(start + i) % len(keys)]
            key: list[KeyValue] = [1000 + h * 10 + i % 10, comm, path] if pid else [comm, path]
            table.append((key, [rng.randrange(1, 10_000)]))
        table.sort(key=lambda r: -r[1][0])
        models.append(
            CounterTable.model_construct(
                kind="counter_table",
                name="opens",
                key_fields=fields,
                value_fields=["count"],
                rows=table,
                total_rows=rows,
                truncated=False,
            )
        )
    return models


def write_job(
    session: Session, hosts: int, rows: int, pool: int, pid: bool
) -> tuple[str, dict[str, float]]:
    """A finished job, stored as the ingest stores it; the seconds spent on each part."""
    rng = random.Random(7)
    keys = [(f"comm{i % 97}", f"/srv/data/file-{i:06d}") for i in range(pool)]
    job = Job(
        id=str(uuid.uuid4()),
        program="opens",
        duration_s=10.0,
        interval_s=None,
        state=JobState.succeeded.value,
    )
    session.add(job)
    spent = {"generate": 0.0, "snapshot": 0.0, "digest": 0.0, "commit": 0.0}
    for h in range(hosts):
        t0 = time.perf_counter()
        models = host_results(h, rows, keys, pid, rng)
        t1 = time.perf_counter()
        raw = [m.model_dump(mode="json") for m in models]  # as the ingest stores a snapshot
        run = Run(
            id=str(uuid.uuid4()),
            job_id=job.id,
            host_name=f"host-{h:04d}",
            state=RunState.succeeded.value,
            last_seq=0,
        )
        session.add(run)
        session.flush()
        session.add(
            SnapshotRow(
                run_id=run.id,
                job_id=job.id,
                host_name=run.host_name,
                seq=0,
                final=True,
                interval_start=0.0,
                interval_end=10.0,
                results=raw,
                stats={},
            )
        )
        session.flush()
        t2 = time.perf_counter()
        store.put(session, run_id=run.id, job_id=job.id, seq=0, results=models)
        session.flush()
        t3 = time.perf_counter()
        if h % 50 == 49:
            session.commit()
        t4 = time.perf_counter()
        spent["generate"] += t1 - t0
        spent["snapshot"] += t2 - t1
        spent["digest"] += t3 - t2
        spent["commit"] += t4 - t3
    session.commit()
    return job.id, spent


def once(factory: Any, client: TestClient, token: str, job_id: str) -> dict[str, float]:
    with factory() as session:
        job = session.get(Job, job_id)
        t0 = time.perf_counter()
        data = store.report_input(session=session, job=job)
        t1 = time.perf_counter()
        report, analysis = service.build(data)
        t2 = time.perf_counter()
        body = report.model_dump_json()
        t3 = time.perf_counter()
        page = render_html(report, analysis)
        t4 = time.perf_counter()
    auth = {"Authorization": f"Bearer {token}"}
    t5 = time.perf_counter()
    got = client.get(f"/v1/jobs/{job_id}/report", headers=auth)
    t6 = time.perf_counter()
    html = client.get(f"/v1/jobs/{job_id}/report?format=html", headers=auth)
    t7 = time.perf_counter()
    assert got.status_code == 200 and html.status_code == 200, (got.text[:200], html.text[:200])
    return {
        "read": t1 - t0,
        "build": t2 - t1,
        "json": t3 - t2,
        "html": t4 - t3,
        "json_total": t3 - t0,
        "html_total": (t2 - t0) + (t4 - t3),
        "get_json": t6 - t5,
        "get_html": t7 - t6,
        "json_mb": len(body) / 1e6,
        "html_mb": len(page.encode()) / 1e6,
        "outliers": float(len(report.outliers)),
    }


def baseline(factory: Any, job_id: str) -> float:
    with factory() as session:
        job = session.get(Job, job_id)
        t0 = time.perf_counter()
        job_results(session=session, job=job)
        return time.perf_counter() - t0


def main() -> int:
    parser = _main.options(__doc__, rounds=3)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--pool", type=int, default=10_200)
    parser.add_argument("--pid", action="store_true")
    parser.add_argument(
        "--db",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="a new SQLite file, or a throwaway PostgreSQL cluster (as the tests use)",
    )
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument(
        "--gc",
        choices=["serve", "default"],
        default="serve",
        help="the collector as `fleettrace serve` sets it (frozen, young generation of "
        f"{GC_YOUNG:,}), or Python's defaults",
    )
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="ft-bench-report-") as tmp,
        database(args.db, Path(tmp)) as url,
    ):
        engine = make_engine(url)
        factory = make_sessionmaker(engine)
        with factory() as session:
            job_id, spent = write_job(session, args.hosts, args.rows, args.pool, args.pid)
        token = create_token(url, "viewer")
        app = create_app(Settings(database_url=url))
        if args.gc == "serve":
            tune_gc()
        with TestClient(app) as client:
            runs = [once(factory, client, token, job_id) for _ in range(args.rounds)]
        base = None if args.no_baseline else baseline(factory, job_id)
        app.state.engine.dispose()
        engine.dispose()
    med = {k: _main.median(r[k] for r in runs) for k in runs[0]}
    per_host_ms = {k: 1000 * v / args.hosts for k, v in spent.items()}
    if args.json:
        doc = {"median": med, "runs": runs, "baseline_s": base, "ingest_ms_per_host": per_host_ms}
        sys.stdout.write(json.dumps(doc) + "\n")
        return 0
    sys.stdout.write(
        f"{args.hosts} hosts x {HISTOGRAMS} hist x {BUCKETS} buckets + {args.rows} rows/host "
        f"(pool {args.pool}{', pid keys' if args.pid else ''}); {args.db}; "
        f"median of {args.rounds}; gc {args.gc}\n"
    )
    for k in ("read", "build", "json", "html", "json_total", "html_total", "get_json", "get_html"):
        sys.stdout.write(f"  {k:<11} {med[k]:7.3f} s\n")
    sys.stdout.write(
        f"  sizes: JSON {med['json_mb']:.1f} MB, HTML {med['html_mb']:.1f} MB; "
        f"{med['outliers']:.0f} outliers\n"
    )
    if base is not None:
        sys.stdout.write(
            f"  baseline job_results (raw snapshots read+parsed+merged) {base:.2f} s; "
            f"GET report / baseline = {med['get_json'] / base:.3f}\n"
        )
    sys.stdout.write(
        "  ingest per final snapshot: store snapshot "
        f"{per_host_ms['snapshot']:.1f} ms, digest {per_host_ms['digest']:.1f} ms "
        f"(x{per_host_ms['digest'] / max(per_host_ms['snapshot'], 1e-9):.2f})\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
