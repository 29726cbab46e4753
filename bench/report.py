"""Time a job report over a large fleet built in memory: JSON and HTML.

1,000 hosts x 8 log2 histograms x 64 buckets, plus one 10,000-row counter table per host
(keys (comm, path) drawn from a shared pool of --pool keys, so hosts overlap as a real fleet
does; --pid adds a per-host pid field: every row distinct, the worst case for the merge).
A few hosts are made slow on purpose. Phases, as the API does them after the database read:

  merge   controller.jobs.merge.merge_results (the fleet aggregate; job_results does this)
  build   controller.reports.service.build_report (stats, metrics, MAD / JS outliers, keys)
  json    JobReport.model_dump_json
  html    controller.reports.render_html.render_html

Targets (issue 5): JSON (merge+build+json) under 1 s, HTML (merge+build+html) under 3 s.

    .venv/bin/python bench/report.py [--hosts 1000] [--rows 10000] [--pool 10200] [--pid]
                                     [--rounds 3] [--gc-freeze] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.jobs.merge import merge_results
from controller.jobs.models import HostResult, JobResults, JobState
from controller.reports.render_html import render_html
from controller.reports.service import build_report
from node_agent.protocol import (
    CounterTable,
    KeyField,
    KeyValue,
    Log2Histogram,
    Result,
    RunState,
)

HISTOGRAMS = 8
BUCKETS = 64


def fleet(hosts: int, rows: int, pool: int, pid: bool) -> list[HostResult]:
    rng = random.Random(7)
    keys = [(f"comm{i % 97}", f"/srv/data/file-{i:06d}") for i in range(pool)]
    fields = [KeyField(name="comm"), KeyField(name="path", type="path")]
    if pid:
        fields.insert(0, KeyField(name="pid", type="int"))
    out: list[HostResult] = []
    for h in range(hosts):
        slow = h % 250 == 17  # 4 odd hosts in 1,000
        results: list[Result] = []
        for n in range(HISTOGRAMS):
            shift = 6 if slow else 0
            # A smooth shape around slot 10 (16 slower on odd hosts), +-10 % noise per bucket.
            buckets = [
                (s, 1 + int(1000 * math.exp(-((s - 10 - shift) ** 2) / 8) * rng.uniform(0.9, 1.1)))
                for s in range(BUCKETS)
            ]
            # model_construct: the bench times the report, not pydantic validating its input.
            results.append(
                Log2Histogram.model_construct(
                    kind="log2_histogram", name=f"lat{n}", unit="usec", labels={}, buckets=buckets
                )
            )
        start = rng.randrange(pool)
        table: list[tuple[list[KeyValue], list[int]]] = []
        for i in range(rows):
            comm, path = keys[(start + i) % pool]
            key: list[KeyValue] = [1000 + h * 10 + i % 10, comm, path] if pid else [comm, path]
            table.append((key, [rng.randrange(1, 10_000)]))
        table.sort(key=lambda r: -r[1][0])
        results.append(
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
        out.append(
            HostResult.model_construct(
                host=f"host-{h:04d}",
                run_id=f"run-{h}",
                state=RunState.succeeded,
                seq=0,
                final=True,
                interval_start=0.0,
                interval_end=10.0,
                results=results,
                stats=None,
            )
        )
    return out


def once(hosts: list[HostResult]) -> dict[str, float]:
    t0 = time.perf_counter()
    merged = merge_results([(h.host, h.results) for h in hosts])
    t1 = time.perf_counter()
    results = JobResults.model_construct(
        job_id="bench", program="opens", state=JobState.succeeded, hosts=hosts, merged=merged
    )
    report = build_report(results, spans={h.run_id: 10.0 for h in hosts}, reasons={})
    t2 = time.perf_counter()
    body = report.model_dump_json()
    t3 = time.perf_counter()
    page = render_html(report, results)
    t4 = time.perf_counter()
    return {
        "merge": t1 - t0,
        "build": t2 - t1,
        "json": t3 - t2,
        "html": t4 - t3,
        "json_total": t3 - t0,
        "html_total": (t2 - t0) + (t4 - t3),
        "json_mb": len(body) / 1e6,
        "html_mb": len(page.encode()) / 1e6,
        "outliers": float(len(report.outliers)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--pool", type=int, default=10_200)
    parser.add_argument("--pid", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() the input first: the cyclic GC then skips the ~30M input objects",
    )
    args = parser.parse_args()
    t = time.perf_counter()
    hosts = fleet(args.hosts, args.rows, args.pool, args.pid)
    setup = time.perf_counter() - t
    if args.gc_freeze:
        gc.collect()
        gc.freeze()
    runs = [once(hosts) for _ in range(args.rounds)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    if args.json:
        sys.stdout.write(json.dumps({"setup_s": setup, "median": med, "runs": runs}) + "\n")
        return 0
    sys.stdout.write(
        f"{args.hosts} hosts x {HISTOGRAMS} hist x {BUCKETS} buckets + {args.rows} rows/host "
        f"(pool {args.pool}{', pid keys' if args.pid else ''}"
        f"{', gc frozen' if args.gc_freeze else ''}); setup {setup:.1f} s; "
        f"median of {args.rounds}\n"
    )
    for k in ("merge", "build", "json", "html", "json_total", "html_total"):
        sys.stdout.write(f"  {k:<11} {med[k]:7.3f} s\n")
    sys.stdout.write(
        f"  sizes: JSON {med['json_mb']:.1f} MB, HTML {med['html_mb']:.1f} MB; "
        f"{med['outliers']:.0f} outliers\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
