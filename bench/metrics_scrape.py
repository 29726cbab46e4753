"""The cost of one /metrics scrape at fleet size, against GET /v1/hosts in the same run.

--hosts hosts and --jobs jobs are written into a real database as bench/console.py writes
them (1,000 and 10,000 by default: ~12,000 runs), and every host gets its events stream in a
private Redis with the ingest group on it and --backlog unread entries (so the lag families
walk 1,000 streams). Then --rounds rounds of a scrape, each reading the database and Redis
afresh (the collector's one-second cache is off), followed by GET /v1/hosts (the API's own
fleet view, same token, same app), through the ASGI app; medians and their ratio.

    .venv/bin/python bench/metrics_scrape.py [--hosts 1000] [--jobs 10000] [--backlog 5]
                                             [--rounds 9] [--db sqlite|postgresql] [--json]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _main
import redis
from _stack import create_token, database, redis_server
from console import probed_capabilities, timed, write_fleet
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.cli.server import tune_gc
from controller.db import make_engine, make_sessionmaker
from controller.jobs.models import Run
from controller.settings import Settings
from node_agent.wire import client_url, events_stream


def fill_streams(url: str, hosts: int, backlog: int, group: str) -> None:
    client = redis.Redis.from_url(client_url(url))
    pipe = client.pipeline(transaction=False)
    for h in range(hosts):
        stream = events_stream(f"host-{h:04d}")
        pipe.xgroup_create(stream, group, id="0", mkstream=True)
        for i in range(backlog):
            pipe.xadd(stream, {"data": f'{{"n": {i}}}'})
    pipe.execute()
    client.close()


def print_table(summary: dict[str, Any]) -> None:
    run, r = summary["run"], summary["result"]
    print(
        f"{run['hosts']} hosts, {run['jobs']} jobs ({run['runs']} runs), {run['db']}, "
        f"{run['backlog']} unread entries per stream; median of {run['rounds']}; "
        f"{run['cpus']} CPUs (load {run['load']:.1f}), kernel {run['kernel']}, {run['at']}"
    )
    print(f"{'request':<12} {'ms':>8} {'KB':>8}")
    print(f"{'/metrics':<12} {r['scrape_ms']:8.1f} {r['scrape_kb']:8.0f}")
    print(f"{'/v1/hosts':<12} {r['hosts_ms']:8.1f} {r['hosts_kb']:8.0f}")
    print(f"scrape / GET /v1/hosts: {r['ratio']:.2f}")


def main() -> int:
    parser = _main.options(__doc__, rounds=9, db=True)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--backlog", type=int, default=5)
    args = parser.parse_args()
    log = _main.progress(args)
    caps = probed_capabilities()
    with (
        _main.scratch("ft-bench-metrics-") as workdir,
        database(args.db, workdir) as url,
        redis_server(workdir) as redis_url,
    ):
        engine = make_engine(url)
        with make_sessionmaker(engine)() as session:
            write_fleet(session, args.hosts, args.jobs, caps)
            runs = session.query(Run).count()
        engine.dispose()
        settings = Settings(database_url=url, redis_url=redis_url, keys_dir=workdir / "keys")
        fill_streams(redis_url, args.hosts, args.backlog, settings.ingest_group)
        log(f"wrote {args.hosts} hosts, {args.jobs} jobs, {runs} runs, {args.hosts} streams")
        auth = {"Authorization": f"Bearer {create_token(url, 'viewer')}"}
        app = create_app(settings)
        app.state.metrics.fleet.ttl_s = 0  # every scrape reads the sources: the real cost
        tune_gc()
        with TestClient(app) as client:
            scrapes, lists = _main.side_by_side(
                args.rounds,
                lambda: timed(lambda: client.get("/metrics", headers=auth)),
                lambda: timed(lambda: client.get("/v1/hosts", headers=auth)),
                log,
                lambda m, b: f"/metrics {1000 * m[0]:.1f} ms, /v1/hosts {1000 * b[0]:.1f} ms",
            )
        app.state.metrics.close()
        app.state.engine.dispose()
    assert all(s[1] == 200 for s in scrapes + lists)
    scrape_s = _main.median(s[0] for s in scrapes) or 0.0
    hosts_s = _main.median(s[0] for s in lists) or 0.0
    result = {
        "scrape_ms": 1000 * scrape_s,
        "scrape_kb": scrapes[-1][2] / 1000,
        "hosts_ms": 1000 * hosts_s,
        "hosts_kb": lists[-1][2] / 1000,
        "ratio": scrape_s / hosts_s if hosts_s else None,
        "scrapes_s": [s[0] for s in scrapes],
        "hosts_s": [s[0] for s in lists],
    }
    run = _main.machine(
        hosts=args.hosts,
        jobs=args.jobs,
        runs=runs,
        backlog=args.backlog,
        db=args.db,
        rounds=args.rounds,
        load=os.getloadavg()[0],
    )
    return _main.finish(args, {"run": run, "result": result}, print_table)


if __name__ == "__main__":
    raise SystemExit(main())
