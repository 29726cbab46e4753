"""Staying connected to Redis: bounded exponential backoff and one log line per outage.

A loop asks `ready()` before using Redis and reports each try with `up()` or `down(exc)`;
while Redis is away the loop keeps doing what needs only the database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

import redis

from controller.db import utcnow

log = logging.getLogger(__name__)

TRANSIENT = (redis.ConnectionError, redis.TimeoutError)  # BusyLoadingError is a ConnectionError


def is_nogroup(exc: redis.ResponseError) -> bool:
    """Redis lost the consumer group (restarted without its data, or the stream was deleted)."""
    return str(exc).startswith("NOGROUP")


class RedisLink:
    def __init__(
        self,
        name: str,
        *,
        first_s: float = 0.2,
        max_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.first_s = first_s
        self.max_s = max_s
        self.clock = clock
        self.hearing_since: datetime | None = None  # since when every try has worked
        self.down_since: float | None = None
        self.failures = 0
        self._next_try = 0.0

    @property
    def is_up(self) -> bool:
        return self.down_since is None

    def ready(self) -> bool:
        return self.clock() >= self._next_try

    def wait_s(self) -> float:
        """How long until the next try is due."""
        return max(0.0, self._next_try - self.clock())

    def up(self) -> None:
        if self.down_since is not None:
            log.warning(
                "%s: redis is back after %.1fs (%d failed tries)",
                self.name,
                self.clock() - self.down_since,
                self.failures,
            )
            self.down_since = None
            self.failures = 0
        if self.hearing_since is None:
            self.hearing_since = utcnow()
        self._next_try = 0.0

    def down(self, exc: BaseException) -> float:
        """Record a failed try; returns the delay before the next one."""
        now = self.clock()
        if self.down_since is None:
            self.down_since = now
            self.hearing_since = None
            log.warning("%s: redis unavailable (%s); retrying with backoff", self.name, exc)
        self.failures += 1
        delay = min(self.max_s, self.first_s * 2.0 ** min(self.failures - 1, 16))
        self._next_try = now + delay
        return delay
