"""One API process's registry: the fleet's families and this process's own."""

from __future__ import annotations

import platform
from collections.abc import Iterator

import anyio
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from controller.jobs.streams import StreamSlots
from controller.metrics.collector import FleetCollector
from controller.metrics.http import request_histogram
from controller.settings import Settings
from node_agent import __version__


class ProcessFamilies(Collector):
    """What this API process holds now: database connections, live event streams."""

    def __init__(self, engine: Engine, slots: StreamSlots) -> None:
        self.engine = engine
        self.slots = slots

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily(
            "fleettrace_build",
            "The controller's version and Python.",
            value={"version": __version__, "python": platform.python_version()},
        )
        pool = self.engine.pool
        checked_out = getattr(pool, "checkedout", None)
        if callable(checked_out):
            yield GaugeMetricFamily(
                "fleettrace_db_pool_connections_in_use",
                "Database connections this process has checked out of its pool.",
                value=checked_out(),
            )
        size = getattr(pool, "size", None)
        if callable(size):
            yield GaugeMetricFamily(
                "fleettrace_db_pool_connections_size",
                "Connections this process's pool keeps open (more may open as overflow).",
                value=size(),
            )
        yield GaugeMetricFamily(
            "fleettrace_sse_streams_open",
            "Live event streams (Server-Sent Events) open in this process.",
            value=self.slots.total(),
        )
        yield GaugeMetricFamily(
            "fleettrace_sse_streams_per_token_limit",
            "How many live event streams one API token may hold open in this process.",
            value=self.slots.per_token,
        )


class Metrics:
    """The registry /metrics serves; `requests` is the API latency histogram to observe."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessions: sessionmaker[Session],
        engine: Engine,
        slots: StreamSlots,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.fleet = FleetCollector(
            sessions=sessions,
            redis_url=settings.redis_url,
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
            ingest_group=settings.ingest_group,
        )
        self.registry.register(self.fleet)
        self.registry.register(ProcessFamilies(engine, slots))
        ProcessCollector(registry=self.registry)  # process_* : this process's CPU, memory, fds
        self.requests = request_histogram(self.registry)
        # Scrapes are encoded on two threads of their own: many at once never take the API's.
        self.encoders = anyio.CapacityLimiter(2)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The registry in the format the scraper asks for (OpenMetrics or Prometheus text)."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type

    def close(self) -> None:
        self.fleet.close()
