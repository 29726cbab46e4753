"""The agent's outbox: events wait here while Redis is away, and leave in order when it is back.

A trace must not fail because Redis restarted for a few seconds, and must not stall on it
either: the trace hands its events over and goes on; one sender thread appends them to the
host's stream in the order they came. The outbox is bounded. Snapshots are cumulative, so
when it is full the oldest non-final snapshot goes first (a later one of the same run holds
everything it held); a queued heartbeat is replaced by the next one. Only if nothing of that
kind is left is an event refused, and the run that needed it is failed by its caller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import redis

from node_agent.protocol import Heartbeat, Refusal, RunEvent, Snapshot, StreamEnvelope
from node_agent.wire import EVENTS_STREAM_MAXLEN, events_stream

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 2000  # events; a snapshot is at most a few MB, most are a few kB
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
# What Redis answers while it comes back: refused connections, lost ACL users, a loading AOF.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.ResponseError)


class OutboxFull(Exception):
    """Nothing could be dropped to make room: the event was not queued."""


@dataclass
class _Item:
    envelope: StreamEnvelope
    data: str


class Outbox:
    """publish() queues and returns; a thread sends, retrying with backoff while Redis is away."""

    def __init__(self, client: redis.Redis, host: str, *, limit: int = DEFAULT_LIMIT) -> None:
        self.client = client
        self.host = host
        self.stream = events_stream(host)
        self.limit = limit
        self.dropped = 0
        self._items: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._down_since: float | None = None
        self._thread = threading.Thread(target=self._send_forever, name="outbox", daemon=True)
        self._thread.start()

    def publish(self, event: RunEvent | Heartbeat | Refusal, job_id: str | None = None) -> None:
        envelope = StreamEnvelope(host=self.host, job_id=job_id, event=event)
        item = _Item(envelope, envelope.model_dump_json())
        with self._cond:
            if isinstance(event, Heartbeat):
                # Only the newest beat matters: one waiting is replaced, never queued twice.
                for i, queued in enumerate(self._items):
                    if isinstance(queued.envelope.event, Heartbeat):
                        del self._items[i]
                        break
            if len(self._items) >= self.limit and not self._make_room():
                raise OutboxFull(
                    f"{len(self._items)} events wait for Redis (the limit):"
                    f" {type(event).__name__} not queued"
                )
            self._items.append(item)
            self._cond.notify()

    def _make_room(self) -> bool:
        """Drop the oldest event another one supersedes; False if there is none."""
        for i, queued in enumerate(self._items):
            event = queued.envelope.event
            if isinstance(event, Heartbeat) or (isinstance(event, Snapshot) and not event.final):
                del self._items[i]
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 100 == 0:
                    log.warning(
                        "host %s: outbox full while Redis is away: %d superseded events dropped",
                        self.host,
                        self.dropped,
                    )
                return True
        return False

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._items)

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued is sent; False if time ran out first."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._items:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what can be sent within timeout_s, then stop the sender."""
        self.flush(timeout_s)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=1.0)

    def _send_forever(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if not self._items:
                    return
                item = self._items[0]
            try:
                self.client.xadd(
                    self.stream,
                    {"data": item.data},
                    maxlen=EVENTS_STREAM_MAXLEN,
                    approximate=True,
                )
            except TRANSIENT as exc:
                if self._closed:
                    return
                failures += 1
                self._went_down(exc)
                time.sleep(BACKOFF_S[min(failures, len(BACKOFF_S)) - 1])
                continue
            failures = 0
            self._came_back()
            with self._cond:
                if self._items and self._items[0] is item:
                    self._items.popleft()
                self._cond.notify_all()

    def _went_down(self, exc: Exception) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "host %s: cannot reach Redis (%s): events wait in the outbox (%d now)",
                self.host,
                exc,
                self.waiting,
            )

    def _came_back(self) -> None:
        if self._down_since is not None:
            log.warning(
                "host %s: Redis is back after %.1fs: sending %d waiting events",
                self.host,
                time.monotonic() - self._down_since,
                self.waiting,
            )
            self._down_since = None
