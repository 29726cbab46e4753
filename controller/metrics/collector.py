"""The fleet's families for a scrape: from the database, from Redis, from the noted counts.

Read at most once per `ttl_s` however many scrape at once (one reader; the others wait for
its result and share it). A source that cannot be read leaves its families out and says so in
`fleettrace_up{source}` and `fleettrace_scrape_errors_total{source}`: a scrape never fails
because Redis or the database is away.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from controller.metrics import database, streams, tally
from node_agent.wire import client_url

log = logging.getLogger(__name__)
AgentFamilies = Callable[[Session], "list[Metric]"]


def _agent_families() -> AgentFamilies | None:
    """The agents' own costs per host (controller/hosts/agent_metrics.py), where present."""
    try:
        module = importlib.import_module("controller.hosts.agent_metrics")
    except ImportError:  # a controller without it: no per-host agent families
        return None
    found: AgentFamilies | None = getattr(module, "agent_families", None)
    return found


agent_families = _agent_families()


class FleetCollector(Collector):
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        redis_url: str,
        heartbeat_timeout_s: float,
        ingest_group: str,
        ttl_s: float = 1.0,
    ) -> None:
        self.sessions = sessions
        self.ingest_group = ingest_group
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.ttl_s = ttl_s
        # Short timeouts: a Redis that does not answer costs a scrape two seconds, not forever.
        self.redis = redis.Redis.from_url(
            client_url(redis_url), socket_timeout=2.0, socket_connect_timeout=2.0
        )
        self.errors: Counter[str] = Counter()
        self.reads = 0  # how many times the sources were read (not served from the cache)
        self._lock = threading.Lock()
        self._cached: list[Metric] = []
        self._cached_at = float("-inf")

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._cached_at >= self.ttl_s:
                self._cached = self._read()
                self._cached_at = time.monotonic()
            found = self._cached
        yield from found

    def close(self) -> None:
        self.redis.close()

    def _read(self) -> list[Metric]:
        self.reads += 1
        readers: dict[str, Callable[[], list[Metric]]] = {
            "database": self._database,
            "redis": self._redis,
        }
        if agent_families is not None:
            readers["agents"] = self._agents
        up = GaugeMetricFamily(
            "fleettrace_up",
            "Whether this scrape could read a source (database, redis, agents); 0: its"
            " families are left out.",
            labels=("source",),
        )
        found: list[Metric] = []
        for source, read in readers.items():
            try:
                found += read()
            except Exception as exc:  # whatever a source raises, the scrape goes on
                self.errors[source] += 1
                why = (str(exc).splitlines() or [""])[0][:300]
                log.warning("metrics: cannot read %s: %s: %s", source, type(exc).__name__, why)
                up.add_metric([source], 0)
            else:
                up.add_metric([source], 1)
        errors = CounterMetricFamily(
            "fleettrace_scrape_errors",
            "Scrapes (reads of the sources) that could not read a source, in this process.",
            labels=("source",),
        )
        for source in readers:
            errors.add_metric([source], self.errors[source])
        return [up, errors, *found]

    def _database(self) -> list[Metric]:
        with self.sessions() as session:
            return database.families(session, heartbeat_timeout_s=self.heartbeat_timeout_s)

    def _redis(self) -> list[Metric]:
        return [*streams.families(self.redis, group=self.ingest_group), *tally.families(self.redis)]

    def _agents(self) -> list[Metric]:
        assert agent_families is not None
        with self.sessions() as session:
            return list(agent_families(session))
