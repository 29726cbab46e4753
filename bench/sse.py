"""What open live views (SSE) cost the rest of the API: /healthz and job submission latency
with 0 and with N streams open on one controller, in the same run, as ratios.

A real stack on unix sockets and 127.0.0.1: redis-server, a migrated SQLite (or PostgreSQL)
database, `fleettrace serve` (API, ingest, scheduler), one real agent. A long `syscalls` job
(a snapshot a second) runs through both phases, so ingest and the agent load both alike;
the only difference is the N streams following it, opened by a separate process (spread
over tokens, within the per-token cap) so that their parsing does not slow the measuring
client. The streams must all be open and have received a snapshot before the loaded phase
is measured; at the end the job is cancelled and every stream must end with it.

    sudo .venv/bin/python bench/sse.py [--streams 200] [--db postgresql] [--json]
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import time
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

import _main
import httpx
from _stack import add_host, agent_worker, controller, create_token, wait_online

HOST = "bench-sse"
PER_TOKEN = 20


def job_body(duration_s: float) -> dict[str, Any]:
    return {
        "program": "syscalls",
        "params": {"per_process": False},
        "duration_s": duration_s,
        "interval_s": 1.0,
        "targets": {"hosts": [HOST]},
    }


# -- the viewers' process ---------------------------------------------------------------------


async def _follow(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], seen: dict[str, Any]
) -> None:
    async with client.stream("GET", url, headers=headers) as answer:
        seen["status"] = answer.status_code
        if answer.status_code != 200:
            return
        # Frames are counted, not parsed: 200 parsers in one process would be the bottleneck.
        tail = b""
        async for chunk in answer.aiter_raw():
            text = tail + chunk
            for key, mark in (("events", b"\nevent: "), ("snapshots", b"\nevent: snapshot\n")):
                seen[key] += text.count(mark) - tail.count(mark)  # the tail was counted already
            seen["ended"] = seen["ended"] or b"event: end\n" in text
            tail = text[-32:]


async def _watch(base: str, url: str, tokens: list[str], conn: Connection) -> None:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    timeout = httpx.Timeout(60.0, read=None)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:
        seen = [{"status": None, "events": 0, "snapshots": 0, "ended": False} for _ in tokens]
        tasks = [
            asyncio.create_task(_follow(client, url, {"Authorization": f"Bearer {t}"}, s))
            for t, s in zip(tokens, seen, strict=True)
        ]
        while not all(s["snapshots"] or s["status"] not in (None, 200) for s in seen):
            await asyncio.sleep(0.1)
        conn.send(("ready", [s["status"] for s in seen]))
        await asyncio.gather(*tasks, return_exceptions=True)
        conn.send(("done", seen))


def watch(base: str, url: str, tokens: list[str], conn: Connection) -> None:
    asyncio.run(_watch(base, url, tokens, conn))


# -- the measuring process --------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(api: httpx.Client, probes: int, submits: int) -> dict[str, float]:
    health = []
    for _ in range(probes):
        start = time.perf_counter()
        answer = api.get("/healthz")
        health.append(time.perf_counter() - start)
        answer.raise_for_status()
    submit = []
    for _ in range(submits):
        start = time.perf_counter()
        answer = api.post("/v1/jobs", json=job_body(1.0))
        submit.append(time.perf_counter() - start)
        if answer.status_code != 201:
            raise RuntimeError(f"submit answered {answer.status_code}: {answer.text}")
    return {
        "healthz_p50_ms": statistics.median(health) * 1000,
        "healthz_p99_ms": pct(health, 0.99) * 1000,
        "healthz_max_ms": max(health) * 1000,
        "submit_p50_ms": statistics.median(submit) * 1000,
        "submit_p99_ms": pct(submit, 0.99) * 1000,
        "submit_total_s": sum(submit),
    }


def wait_jobs_final(api: httpx.Client, timeout_s: float = 300) -> None:
    """Between phases: nothing submitted in one is still running in the next."""
    deadline = time.monotonic() + timeout_s
    while api.get("/v1/jobs", params={"state": "pending", "limit": 1}).json()["count"] or (
        api.get("/v1/jobs", params={"state": "running", "limit": 1}).json()["count"] > 1
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("submitted jobs did not finish")
        time.sleep(0.5)


def main() -> int:
    parser = _main.options(__doc__, db=True)
    parser.add_argument("--streams", type=int, default=200, help="open SSE streams (200)")
    parser.add_argument("--probes", type=int, default=300, help="/healthz requests per phase")
    parser.add_argument("--submits", type=int, default=20, help="job submissions per phase")
    args, log = _main.start(parser, root=True)
    phases: dict[str, dict[str, float]] = {}
    viewers: list[dict[str, Any]] = []
    with controller("ft-bench-sse-", args.db) as stack:
        workdir = stack.workdir
        tokens = [
            create_token(stack.database_url, "viewer") for _ in range(-(-args.streams // PER_TOKEN))
        ]
        with (
            open(workdir / "agent.log", "wb") as agent_log,
            stack.serve(FLEETTRACE_SSE_STREAMS_PER_TOKEN=str(PER_TOKEN)) as base,
            # The host is added first: its agent speaks with its own Redis identity.
            agent_worker(HOST, add_host(base, stack.admin, HOST), agent_log, workdir),
            stack.api(base, timeout_s=120) as api,
        ):
            wait_online(api, 1)
            watched = api.post("/v1/jobs", json=job_body(3600)).json()
            log(f"stack up ({args.db}); job {watched['id']} runs through both phases")
            measure(api, 20, 2)  # warm-up
            wait_jobs_final(api)
            phases["0"] = measure(api, args.probes, args.submits)
            log(f"0 streams: {json.dumps(phases['0'])}")
            wait_jobs_final(api)

            ctx = multiprocessing.get_context("spawn")
            ours, theirs = ctx.Pipe()
            stream_tokens = [tokens[i // PER_TOKEN] for i in range(args.streams)]
            url = f"/v1/jobs/{watched['id']}/events"
            proc = ctx.Process(target=watch, args=(base, url, stream_tokens, theirs))
            proc.start()
            try:
                if not ours.poll(300):
                    raise RuntimeError("the streams did not all open within 300 s")
                _, statuses = ours.recv()
                if statuses != [200] * args.streams:
                    raise RuntimeError(f"not every stream opened: {statuses}")
                log(f"{args.streams} streams open, each has had a snapshot")
                phases[str(args.streams)] = measure(api, args.probes, args.submits)
                log(f"{args.streams} streams: {json.dumps(phases[str(args.streams)])}")
                api.post(f"/v1/jobs/{watched['id']}/cancel").raise_for_status()
                if not ours.poll(120):
                    raise RuntimeError("the streams did not end with the job")
                _, viewers = ours.recv()
            finally:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
    loaded = phases[str(args.streams)]
    summary = {
        "db": args.db,
        "streams": args.streams,
        "cpus": os.cpu_count(),
        "at": datetime.now().isoformat(timespec="seconds"),
        "phases": phases,
        "ratios": {k: loaded[k] / phases["0"][k] for k in loaded if phases["0"][k] > 0},
        "viewers": {
            "ended_with_the_job": sum(bool(v["ended"]) for v in viewers),
            "events_min": min(v["events"] for v in viewers),
            "events_max": max(v["events"] for v in viewers),
        },
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"\n{'metric':<18}{'0 streams':>12}{f'{args.streams} streams':>14}{'ratio':>8}")
    for key, value in phases["0"].items():
        ratio = summary["ratios"].get(key, float("nan"))
        print(f"{key:<18}{value:>12.1f}{loaded[key]:>14.1f}{ratio:>8.2f}")
    v = summary["viewers"]
    print(
        f"\n{v['ended_with_the_job']}/{args.streams} streams ended with the job; "
        f"each got {v['events_min']}..{v['events_max']} events"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
