"""Sending work to agents: one Celery task per run on the host's own queue; cancel flags."""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Protocol

import redis
from celery import Celery

from node_agent.protocol import TraceRequest
from node_agent.wire import (
    CANCEL_TTL_S,
    TASK_RUN_TRACE,
    cancel_key,
    celery_config,
    client_url,
    host_queue,
)

log = logging.getLogger(__name__)
PRIORITY_SEP = "\x06\x16"


class Dispatcher(Protocol):
    def send(self, *, host: str, request: TraceRequest, expires_s: float) -> None: ...

    def request_cancel(self, *, host: str, run_id: str) -> None: ...

    def forget_host(self, *, host: str) -> None: ...


class CeleryDispatcher:
    """Tasks carry the request (ids and parameters), JSON only, with an expiry."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url

    @cached_property
    def celery(self) -> Celery:
        app = Celery("fleettrace-controller")
        app.conf.update(celery_config(self.redis_url))
        return app

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(client_url(self.redis_url))

    def send(self, *, host: str, request: TraceRequest, expires_s: float) -> None:
        self.celery.send_task(
            TASK_RUN_TRACE,
            args=[request.model_dump(mode="json")],
            queue=host_queue(host),
            routing_key=host_queue(host),
            expires=expires_s,
            task_id=request.run_id,
        )
        log.info("run %s (job %s): queued for %s", request.run_id, request.job_id, host)

    def request_cancel(self, *, host: str, run_id: str) -> None:
        self.redis.set(cancel_key(host, run_id), "1", ex=CANCEL_TTL_S)

    def forget_host(self, *, host: str) -> None:
        """Drop a deleted host's queue: no agent will consume what waits there."""
        queue = host_queue(host)
        # kombu's Redis transport: the list itself, one list per priority, the binding set.
        keys = [queue, *(f"{queue}{PRIORITY_SEP}{p}" for p in range(1, 10))]
        removed = self.redis.delete(*keys, f"_kombu.binding.{queue}")
        log.info("host %s: deleted, its queue dropped (%d keys)", host, removed)
