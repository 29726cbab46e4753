"""Server-Sent Events for a job: one poller per followed job, fanned out to its subscribers.

Each poll opens a session, reads what is new and closes it, so a live view holds no database
connection between polls however many people watch. Polls and replays run on a small thread
pool of their own: viewers never take the threads that the rest of the API needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy import Text, cast, select
from sqlalchemy.orm import Session, sessionmaker

from controller.jobs.models import Job, JobEvent, JobState, SnapshotRow

log = logging.getLogger(__name__)
POLL_S = 0.25
KEEPALIVE_S = 15.0
PAGE = 500
# Frames a subscriber may fall behind the live feed before it reads from the database instead.
QUEUE_MAX = 1000
END_FRAME = b"event: end\ndata: {}\n\n"
KEEPALIVE_FRAME = b": keepalive\n\n"


@dataclass(frozen=True)
class Page:
    """Events after a cursor, as SSE frames; `done` when the job is final and nothing follows."""

    frames: list[tuple[int, bytes]]
    done: bool


def read_page(sessions: sessionmaker[Session], job_id: str, after: int) -> Page:
    with sessions() as session:
        # Read the state before the events: a job seen final has all its events committed.
        job = session.get(Job, job_id)
        final = job is None or JobState(job.state).final
        rows = session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after)
            .order_by(JobEvent.id)
            .limit(PAGE)
        ).all()
        snapshot_ids = [r.payload.get("snapshot_id") for r in rows if r.kind == "snapshot"]
        # The stored results and stats as JSON text, spliced into the frame as they are: not
        # decoded and encoded again (a 1,000-host job's snapshots were a tenth of the API's
        # time while one viewer followed it).
        query = select(
            SnapshotRow.id,
            SnapshotRow.final,
            SnapshotRow.interval_start,
            SnapshotRow.interval_end,
            cast(SnapshotRow.results, Text),
            cast(SnapshotRow.stats, Text),
        ).where(SnapshotRow.id.in_(snapshot_ids))
        snapshots = {snap[0]: snap for snap in session.execute(query)}
        frames: list[tuple[int, bytes]] = []
        for row in rows:
            data: dict[str, Any] = dict(row.payload)
            snap = snapshots.get(data.get("snapshot_id", -1)) if row.kind == "snapshot" else None
            if snap is None:
                text = json.dumps(data)
            else:
                _, is_final, start, end, results, stats = snap
                data.update(final=is_final, interval_start=start, interval_end=end)
                text = json.dumps(data)[:-1]  # not empty: it names the run and the snapshot
                text += f', "results": {_one_line(results)}, "stats": {_one_line(stats)}}}'
            # Encoded once here, not once per subscriber.
            frame = f"id: {row.id}\nevent: {row.kind}\ndata: {text}\n\n"
            frames.append((row.id, frame.encode()))
        return Page(frames, done=final and len(rows) < PAGE)


def _one_line(raw: str | None) -> str:
    """Stored JSON, fit for one SSE data line (ours never has a raw line break; anything
    else is re-encoded)."""
    if raw is None:
        return "null"
    if "\n" in raw or "\r" in raw:
        return json.dumps(json.loads(raw))
    return raw


class _Signal:
    """What a feed tells its subscribers besides frames."""

    def __init__(self, name: str) -> None:
        self.name = name


ENDED = _Signal("ended")  # the job is final and every event was sent
CLOSED = _Signal("closed")  # the controller stops or the feed failed: the client reconnects
LAGGED = _Signal("lagged")  # the subscriber's queue overflowed: read up to `mark` from the database


@dataclass(eq=False)
class Subscriber:
    # Sent up to here; the live feed delivers what comes after `mark` (replayed from the DB).
    cursor: int
    mark: int
    queue: asyncio.Queue[tuple[int, bytes] | _Signal] = field(default_factory=asyncio.Queue)

    def push(self, item: tuple[int, bytes]) -> bool:
        """Queue a frame; False when the queue overflowed and the subscriber must catch up."""
        if self.queue.qsize() >= QUEUE_MAX:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.mark = item[0]
            self.queue.put_nowait(LAGGED)
            return False
        self.queue.put_nowait(item)
        return True


@dataclass(eq=False)
class Feed:
    """One followed job on one event loop: its cursor, its subscribers and their poller."""

    job_id: str
    cursor: int
    subscribers: set[Subscriber] = field(default_factory=set)
    task: asyncio.Task[None] | None = None

    def broadcast(self, item: tuple[int, bytes] | _Signal) -> None:
        for sub in self.subscribers:
            if isinstance(item, _Signal):
                sub.queue.put_nowait(item)
            elif not sub.push(item):
                log.info(
                    "job %s: a subscriber fell behind; it reads from the database", self.job_id
                )


class EventHub:
    """Every live view of this process: one poller per job, however many subscribers it has."""

    def __init__(self, sessions: sessionmaker[Session], *, threads: int = 4) -> None:
        self.sessions = sessions
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sse-poll")
        # Per event loop (the app may be driven by more than one, e.g. in tests).
        self._feeds: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Feed]] = (
            weakref.WeakKeyDictionary()
        )
        self.closing = False

    def open_feeds(self) -> int:
        return sum(len(feeds) for feeds in list(self._feeds.values()))

    async def read(self, job_id: str, after: int) -> Page:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, read_page, self.sessions, job_id, after)

    def _subscribe(self, job_id: str, after: int) -> tuple[Feed, Subscriber]:
        loop = asyncio.get_running_loop()
        feeds = self._feeds.setdefault(loop, {})
        feed = feeds.get(job_id)
        if feed is None:
            feed = feeds[job_id] = Feed(job_id, cursor=after)
            feed.task = loop.create_task(self._poll(feeds, feed), name=f"sse-{job_id}")
        sub = Subscriber(cursor=after, mark=feed.cursor)
        feed.subscribers.add(sub)
        return feed, sub

    async def _poll(self, feeds: dict[str, Feed], feed: Feed) -> None:
        try:
            while True:
                # No await between this check and the removal: a new subscriber either sees
                # this feed alive or makes a new one.
                if not feed.subscribers or self.closing:
                    feed.broadcast(CLOSED)
                    return
                page = await self.read(feed.job_id, feed.cursor)
                for item in page.frames:
                    feed.broadcast(item)
                    feed.cursor = item[0]
                if page.done:
                    feed.broadcast(ENDED)
                    return
                if len(page.frames) < PAGE:
                    await asyncio.sleep(POLL_S)
        except Exception:
            log.exception("job %s: live events failed; closing its streams", feed.job_id)
            feed.broadcast(CLOSED)
        finally:
            if feeds.get(feed.job_id) is feed:
                del feeds[feed.job_id]

    async def stream(self, job_id: str, after: int) -> AsyncGenerator[bytes, None]:
        """The job's events after `after` (replayed), then live ones, then an `end` event."""
        feed, sub = self._subscribe(job_id, after)
        try:
            while True:
                while sub.cursor < sub.mark:
                    page = await self.read(job_id, sub.cursor)
                    behind = [(i, frame) for i, frame in page.frames if i <= sub.mark]
                    for event_id, frame in behind:
                        yield frame
                        sub.cursor = event_id
                    if len(behind) < len(page.frames) or len(page.frames) < PAGE:
                        sub.cursor = max(sub.cursor, sub.mark)
                item: tuple[int, bytes] | _Signal | None = None
                if sub.queue.empty():
                    with anyio.move_on_after(KEEPALIVE_S):  # a cancel scope: no task per wait
                        item = await sub.queue.get()
                    if item is None:
                        yield KEEPALIVE_FRAME
                        continue
                else:
                    item = sub.queue.get_nowait()
                if item is ENDED:
                    yield END_FRAME
                    return
                if item is CLOSED:
                    return
                if isinstance(item, tuple) and item[0] > sub.cursor:
                    yield item[1]
                    sub.cursor = item[0]
        finally:
            feed.subscribers.discard(sub)

    def close(self) -> None:
        """End every live stream (the controller stops); clients resume with Last-Event-ID.

        Safe from a signal handler: it only sets a flag and schedules work on each loop.
        """
        self.closing = True
        for loop, feeds in list(self._feeds.items()):
            with contextlib.suppress(RuntimeError):  # that loop is closed already
                loop.call_soon_threadsafe(self._close_feeds, feeds)

    @staticmethod
    def _close_feeds(feeds: dict[str, Feed]) -> None:
        for feed in list(feeds.values()):
            feed.broadcast(CLOSED)
