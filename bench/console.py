"""Server time of the console's Fleet and Jobs pages against the JSON API for the same data.

--hosts hosts (default 1,000: labelled, nine in ten online, each with the capabilities this
machine's agent probes, so the host x program matrix is full) and --jobs jobs (default
10,000, over 30 days, two runs each and every 100th on 50 hosts) are written into a real
database (a SQLite file, or a throwaway PostgreSQL cluster with --db postgresql). Then, in
the same run, --rounds rounds of each console page followed by its API twin, through the
ASGI app (TestClient: a session signed in through /signin for the pages, the viewer's
token for the API), median per pair and their ratio:

  /fleet                    GET /v1/hosts
  /fleet?selector=role=web  GET /v1/hosts?selector=role=web
  /jobs                     GET /v1/jobs
  /jobs?offset=5000         GET /v1/jobs?offset=5000   (half of --jobs)
  /jobs?program=runqlat     GET /v1/jobs?program=runqlat
  /jobs?host=host-0042      GET /v1/jobs?host=host-0042

Target (issue 14): under 300 ms per page. A page the console does not serve yet is listed
with its status instead of a time.

    .venv/bin/python bench/console.py [--hosts 1000] [--jobs 10000] [--rounds 7]
                                      [--db sqlite|postgresql] [--json]
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _main
from _stack import BIN, create_token, database
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from controller.app import create_app
from controller.cli.server import tune_gc
from controller.db import make_engine, make_sessionmaker, utcnow
from controller.hosts.models import Host
from controller.jobs.models import Job, JobState, Run, Targets
from controller.settings import Settings
from node_agent.protocol import RunState

TARGET_S = 0.300
PROGRAMS = ("syscalls", "runqlat", "opens", "cpu_profile", "biolatency")
ROLES = ("web", "db", "cache", "batch", "queue")
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def probed_capabilities() -> dict[str, Any]:
    """What this machine's agent reports (root: the real probe, every program's support)."""
    probe = subprocess.run(
        [str(BIN / "fleettrace-agent"), "probe"], capture_output=True, text=True, check=True
    )
    caps: dict[str, Any] = json.loads(probe.stdout)
    return caps


def write_fleet(session: Session, hosts: int, jobs: int, caps: dict[str, Any]) -> None:
    now = utcnow()
    names = [f"host-{h:04d}" for h in range(hosts)]
    for h, name in enumerate(names):
        session.add(
            Host(
                name=name,
                address=f"10.0.{h // 250}.{h % 250 + 1}",
                labels={"role": ROLES[h % len(ROLES)], "zone": f"z{h % 4}"},
                last_heartbeat=now - timedelta(hours=2 if h % 10 == 9 else 0, seconds=h % 7),
                agent_version="0.1.0",
                capabilities=caps,
            )
        )
    session.commit()
    for j in range(jobs):
        on = names[j % hosts : j % hosts + 50] if j % 100 == 0 else names[j % hosts :][:2]
        state = JobState.failed if j % 37 == 0 else JobState.succeeded
        created = now - timedelta(seconds=30 * 24 * 3600 * j / jobs)
        job = Job(
            id=str(uuid.uuid4()),
            program=PROGRAMS[j % len(PROGRAMS)],
            params={},
            targets=Targets(hosts=list(on)),
            duration_s=10.0,
            interval_s=None,
            state=state.value,
            created_by="bench-operator",
            created_at=created,
            finished_at=created + timedelta(seconds=11),
        )
        session.add(job)
        for host in on:
            failed = state is JobState.failed and host == on[0]
            session.add(
                Run(
                    id=str(uuid.uuid4()),
                    job_id=job.id,
                    host_name=host,
                    state=(RunState.failed if failed else RunState.succeeded).value,
                    reason="tracepoint raw_syscalls:sys_enter is missing" if failed else None,
                    created_at=created,
                    started_at=created,
                    finished_at=created + timedelta(seconds=10),
                    last_seq=0,
                )
            )
        if j % 500 == 499:
            session.commit()
    session.commit()


def signed_in(client: TestClient, raw_token: str) -> None:
    """The session cookie, through the sign-in form as a browser gets it."""
    form = client.get("/signin")
    found = CSRF.search(form.text)
    assert found, form.text[:500]
    done = client.post(
        "/signin", data={"token": raw_token, "csrf": found.group(1)}, follow_redirects=False
    )
    assert done.status_code == 303, done.text[:500]


Sample = tuple[float, int, int]  # seconds, status, bytes


def timed(get: Callable[[], Any]) -> Sample:
    """Seconds, status and body size of one request."""
    t0 = time.perf_counter()
    answer = get()
    return time.perf_counter() - t0, answer.status_code, len(answer.content)


def pairs(hosts: int, jobs: int) -> list[tuple[str, str]]:
    offset = jobs // 2
    host = f"host-{min(42, hosts - 1):04d}"
    return [
        ("/fleet", "/v1/hosts"),
        ("/fleet?selector=role%3Dweb", "/v1/hosts?selector=role%3Dweb"),
        ("/jobs", "/v1/jobs"),
        (f"/jobs?offset={offset}", f"/v1/jobs?offset={offset}"),
        ("/jobs?program=runqlat", "/v1/jobs?program=runqlat"),
        (f"/jobs?host={host}", f"/v1/jobs?host={host}"),
    ]


def measure(
    page: TestClient, api: TestClient, token: str, args: Any, log: Any
) -> list[dict[str, Any]]:
    auth = {"Authorization": f"Bearer {token}"}
    out: list[dict[str, Any]] = []
    for path, twin in pairs(args.hosts, args.jobs):

        def ours(path: str = path) -> Sample:
            return timed(lambda: page.get(path, follow_redirects=False))

        def base(twin: str = twin) -> Sample:
            return timed(lambda: api.get(twin, headers=auth))

        def line(m: Sample, b: Sample, path: str = path) -> str:
            return f"{path} {1000 * m[0]:.0f} ms ({m[1]}), API {1000 * b[0]:.0f} ms"

        mine, theirs = _main.side_by_side(args.rounds, ours, base, log, line)
        status = mine[-1][1]
        page_s = _main.median(m[0] for m in mine) if status == 200 else None
        api_s = _main.median(b[0] for b in theirs)
        assert all(b[1] == 200 for b in theirs), theirs
        out.append(
            {
                "page": path,
                "api": twin,
                "status": status,
                "page_ms": None if page_s is None else 1000 * page_s,
                "api_ms": None if api_s is None else 1000 * api_s,
                "ratio": None if page_s is None or not api_s else page_s / api_s,
                "page_kb": mine[-1][2] / 1000,
                "api_kb": theirs[-1][2] / 1000,
                "under_target": None if page_s is None else page_s < TARGET_S,
            }
        )
    return out


def print_table(summary: dict[str, Any]) -> None:
    run = summary["run"]
    print(
        f"{run['hosts']} hosts, {run['jobs']} jobs ({run['runs']} runs), {run['db']}; "
        f"median of {run['rounds']}; written in {run['write_s']:.1f} s; "
        f"{run['cpus']} CPUs (load {run['load']:.1f}), kernel {run['kernel']}, {run['at']}"
    )
    head = f"{'page':<28} {'ms':>7} {'KB':>7}   {'API twin':<26} {'ms':>7} {'KB':>7}"
    print(f"{head} {'page/API':>9}")
    for r in summary["pages"]:
        if r["page_ms"] is None:
            shown = f"{'HTTP ' + str(r['status']):>7} {'':>7}"
        else:
            shown = f"{r['page_ms']:7.1f} {r['page_kb']:7.0f}"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:9.2f}"
        twin = f"{r['api']:<26} {r['api_ms']:7.1f} {r['api_kb']:7.0f}"
        print(f"{r['page']:<28} {shown}   {twin} {ratio}")
    print(f"target: every page under {1000 * TARGET_S:.0f} ms")


def main() -> int:
    parser = _main.options(__doc__, rounds=7, db=True)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=10_000)
    args = parser.parse_args()
    log = _main.progress(args)
    caps = probed_capabilities()
    with _main.scratch("ft-bench-console-") as workdir, database(args.db, workdir) as url:
        engine = make_engine(url)
        t0 = time.perf_counter()
        with make_sessionmaker(engine)() as session:
            write_fleet(session, args.hosts, args.jobs, caps)
            runs = session.query(Run).count()
        write_s = time.perf_counter() - t0
        engine.dispose()
        log(f"wrote {args.hosts} hosts, {args.jobs} jobs, {runs} runs in {write_s:.1f} s")
        token = create_token(url, "viewer")
        app = create_app(Settings(database_url=url, keys_dir=workdir / "keys"))
        tune_gc()  # as `fleettrace serve` sets the collector
        with TestClient(app) as page, TestClient(app) as api:
            signed_in(page, token)
            rows = measure(page, api, token, args, log)
        app.state.engine.dispose()
    run = _main.machine(
        hosts=args.hosts,
        jobs=args.jobs,
        runs=runs,
        db=args.db,
        rounds=args.rounds,
        write_s=write_s,
        load=os.getloadavg()[0],  # the machine may be shared: say how busy it was
    )
    return _main.finish(args, {"run": run, "pages": rows}, print_table)


if __name__ == "__main__":
    raise SystemExit(main())
