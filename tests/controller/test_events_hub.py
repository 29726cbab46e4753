"""The event hub on a real database: fan-out, resume, a subscriber too slow for the live feed."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from sqlalchemy.orm import Session, sessionmaker

from controller.jobs import events
from controller.jobs.events import EventHub
from controller.jobs.models import Job, JobEvent, JobState

N = 3000  # more than QUEUE_MAX and several pages


@pytest.fixture(scope="module")
def job_id(sessions: sessionmaker[Session]) -> str:
    """A job that is over, with N events (ids increasing from the first one)."""
    job_id = str(uuid.uuid4())
    with sessions() as session:
        session.add(Job(id=job_id, program="syscalls", duration_s=1.0, interval_s=None))
        session.flush()
        session.add_all(JobEvent(job_id=job_id, kind="state", payload={"n": n}) for n in range(N))
        session.get(Job, job_id).state = JobState.succeeded.value  # type: ignore[union-attr]
        session.commit()
    return job_id


async def collect(hub: EventHub, job_id: str, after: int, slow: bool = False) -> list[bytes]:
    frames = []
    async for frame in hub.stream(job_id, after):
        frames.append(frame)
        if slow and len(frames) == 1:
            await asyncio.sleep(1.0)  # the feed runs on meanwhile: this one's queue overflows
    return frames


def ids(frames: list[bytes]) -> list[int]:
    return [int(f.split(b"\n", 1)[0].removeprefix(b"id: ")) for f in frames if f.startswith(b"id:")]


def test_every_subscriber_gets_each_event_once_in_order_then_end(
    sessions: sessionmaker[Session], job_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="controller.jobs.events")
    hub = EventHub(sessions, threads=2)

    async def scenario() -> tuple[list[bytes], list[bytes], list[bytes], int]:
        first = asyncio.create_task(collect(hub, job_id, 0, slow=True))
        await asyncio.sleep(0)  # the first one makes the feed
        assert hub.open_feeds() == 1
        tasks = [first, asyncio.create_task(collect(hub, job_id, 0))]
        all_ids = ids(await tasks[1])
        resume_at = all_ids[N // 2]
        late = await collect(hub, job_id, resume_at)
        return await first, await tasks[1], late, resume_at

    slow, fast, late, resume_at = asyncio.run(scenario())
    everything = ids(fast)
    assert len(everything) == N and everything == sorted(everything)
    assert fast[-1] == events.END_FRAME
    assert ids(slow) == everything and slow[-1] == events.END_FRAME
    assert ids(late) == [i for i in everything if i > resume_at]
    assert late[-1] == events.END_FRAME
    assert hub.open_feeds() == 0
    lagged = [r.getMessage() for r in caplog.records if "fell behind" in r.getMessage()]
    # The slow one overflowed its queue (maybe more than once) and caught up from the database.
    assert set(lagged) == {f"job {job_id}: a subscriber fell behind; it reads from the database"}
