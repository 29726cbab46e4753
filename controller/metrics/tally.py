"""Counts and latencies noted by any controller process, kept in one Redis hash.

Ingest and the scheduler run in processes of their own (or on other machines), so what they
count cannot live in the API's memory: a note joins the database transaction that did the work
(`session.info`) and is added to the hash after that transaction commits (dropped if it rolls
back), so a count moves once per thing done, whichever process did it. The values are
fleet-wide: every controller's /metrics shows the same, and they survive a controller restart.
A note that cannot reach Redis is lost (logged once per outage): metrics never stop the work.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from node_agent.wire import client_url

log = logging.getLogger(__name__)
KEY = "fleettrace:metrics"
INFO_KEY = "fleettrace.tally"
# Seconds, from a fast local dispatch to a host whose agent is slow to answer.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(frozen=True)
class Family:
    name: str  # as exported (a counter's without its `_total`)
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None  # set: a histogram of seconds

    @property
    def is_histogram(self) -> bool:
        return self.buckets is not None


FAMILIES = {
    "dispatch_accept": Family(
        "fleettrace_dispatch_accept_seconds",
        "From a run's task being queued to its host's agent accepting it (as ingest hears it).",
        buckets=LATENCY_BUCKETS,
    ),
    "first_snapshot": Family(
        "fleettrace_first_snapshot_seconds",
        "From a job's submission to the first snapshot of each of its runs being stored.",
        buckets=LATENCY_BUCKETS,
    ),
    "schedule_fires": Family(
        "fleettrace_schedule_fires",
        "Schedule slots by outcome (fired, skipped_misfire, skipped_overlap, failed).",
        labels=("outcome",),
    ),
}


def _pending(session: Session) -> Counter[str]:
    found = session.info.get(INFO_KEY)
    if found is None:
        found = session.info[INFO_KEY] = Counter()
    return found  # type: ignore[no-any-return]


def count(session: Session, key: str, *labels: str) -> None:
    """One more of family `key` (label values in its order), once `session` commits."""
    family = FAMILIES[key]
    assert len(labels) == len(family.labels) and not family.is_histogram, key
    _pending(session)["|".join((key, *labels))] += 1


def observe(session: Session, key: str, seconds: float) -> None:
    """One latency into histogram `key`, once `session` commits."""
    buckets = FAMILIES[key].buckets
    assert buckets is not None, key
    seconds = max(0.0, seconds)
    bound = next((b for b in buckets if seconds <= b), None)
    pending = _pending(session)
    pending[f"{key}|le={bound if bound is not None else '+Inf'}"] += 1
    # Sums in microseconds: HINCRBY is exact where HINCRBYFLOAT accumulates rounding.
    pending[f"{key}|sum_us"] += round(seconds * 1_000_000)


class _Flusher:
    """Adds a session's notes to Redis after its commit."""

    def __init__(self, redis_url: str) -> None:
        self.client = redis.Redis.from_url(
            client_url(redis_url), socket_timeout=1.0, socket_connect_timeout=1.0
        )
        self._failing = False
        self._lock = threading.Lock()

    def after_commit(self, session: Session) -> None:
        notes: Counter[str] | None = session.info.pop(INFO_KEY, None)
        if not notes:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for field, amount in notes.items():
                pipe.hincrby(KEY, field, amount)
            pipe.execute()
        except redis.RedisError as exc:
            with self._lock:
                if not self._failing:
                    log.warning("metrics: cannot add counts to redis (%s); dropping them", exc)
                self._failing = True
            return
        with self._lock:
            if self._failing:
                log.info("metrics: counts reach redis again")
            self._failing = False

    def after_rollback(self, session: Session, previous: SessionTransaction) -> None:
        if previous.parent is None:  # the whole transaction, not a savepoint inside it
            session.info.pop(INFO_KEY, None)


_attached: weakref.WeakKeyDictionary[sessionmaker[Session], _Flusher] = weakref.WeakKeyDictionary()
_attach_lock = threading.Lock()


def attach(sessions: sessionmaker[Session], redis_url: str) -> None:
    """Make commits of `sessions` add their notes to Redis (once per sessionmaker)."""
    with _attach_lock:
        if sessions in _attached:
            return
        flusher = _attached[sessions] = _Flusher(redis_url)
    event.listen(sessions, "after_commit", flusher.after_commit)
    event.listen(sessions, "after_soft_rollback", flusher.after_rollback)


def families(client: redis.Redis) -> list[Metric]:
    """The noted families as they stand in Redis (raises redis.RedisError when away)."""
    raw: Any = client.hgetall(KEY)
    values = {k.decode(): int(v) for k, v in raw.items()}
    out: list[Metric] = []
    for key, family in FAMILIES.items():
        if family.buckets is not None:
            out.append(_histogram(key, family, family.buckets, values))
            continue
        counter = CounterMetricFamily(family.name, family.help, labels=family.labels)
        for field, amount in sorted(values.items()):
            parts = field.split("|")
            if parts[0] == key and len(parts) == len(family.labels) + 1:
                counter.add_metric(parts[1:], amount)
        out.append(counter)
    return out


def _histogram(
    key: str, family: Family, buckets: tuple[float, ...], values: dict[str, int]
) -> HistogramMetricFamily:
    cumulative: list[tuple[str, float]] = []
    total = 0
    for bound in (*(str(b) for b in buckets), "+Inf"):
        total += values.get(f"{key}|le={bound}", 0)
        cumulative.append((bound, total))
    seconds = values.get(f"{key}|sum_us", 0) / 1_000_000
    histogram = HistogramMetricFamily(family.name, family.help)
    histogram.add_metric([], cumulative, seconds)
    return histogram
