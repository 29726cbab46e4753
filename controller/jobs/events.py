"""Server-Sent Events for a job: replay its event log from the start, then follow it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from controller.jobs.models import Job, JobEvent, JobState, SnapshotRow

POLL_S = 0.25
KEEPALIVE_S = 15.0


def _fetch(sessions: sessionmaker[Session], job_id: str, after: int) -> tuple[list[str], int, bool]:
    with sessions() as session:
        # Read the state before the events: a job seen final has all its events committed.
        job = session.get(Job, job_id)
        final = job is None or JobState(job.state).final
        rows = session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after)
            .order_by(JobEvent.id)
            .limit(500)
        ).all()
        frames: list[str] = []
        for row in rows:
            data: dict[str, Any] = dict(row.payload)
            if row.kind == "snapshot":
                snap = session.get(SnapshotRow, data.get("snapshot_id"))
                if snap is not None:
                    data.update(
                        final=snap.final,
                        interval_start=snap.interval_start,
                        interval_end=snap.interval_end,
                        results=snap.results,
                        stats=snap.stats,
                    )
            frames.append(f"id: {row.id}\nevent: {row.kind}\ndata: {json.dumps(data)}\n\n")
            after = row.id
        done = final and len(rows) < 500
        return frames, after, done


async def stream_job_events(request: Request, *, job_id: str, after: int) -> AsyncIterator[str]:
    sessions = request.app.state.sessions
    last_sent = time.monotonic()
    while True:
        frames, after, done = await run_in_threadpool(_fetch, sessions, job_id, after)
        for frame in frames:
            yield frame
            last_sent = time.monotonic()
        if done:
            yield "event: end\ndata: {}\n\n"
            return
        if await request.is_disconnected():
            return
        if time.monotonic() - last_sent > KEEPALIVE_S:
            yield ": keepalive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(POLL_S)
