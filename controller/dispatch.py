"""Sending work to agents: one signed Celery task per run on its host's queue; signed cancels."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from typing import Protocol

import redis
from celery import Celery
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kombu.exceptions import KombuError
from kombu.messaging import Producer

from controller.keys.store import KeyStore
from node_agent.protocol import TraceRequest
from node_agent.signing import sign
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
# Tasks per Redis pipeline. A pipeline that fails leaves its own tasks uncertain (some may
# have reached Redis); the tasks after it are known not to have been sent.
BATCH = 250
# What sending raises when Redis is away (a failed batch is a KombuError: BatchPublishError).
BROKER_DOWN = (KombuError, redis.RedisError, OSError)

Work = tuple[str, TraceRequest]  # (host, request)


class Dispatcher(Protocol):
    def send_all(
        self, work: Sequence[Work], *, expires_s: float
    ) -> list[tuple[TraceRequest, Exception]]:
        """Queue one task per (host, request); answer the requests not (surely) queued."""
        ...

    def request_cancel(self, *, host: str, run_id: str) -> None: ...

    def forget_host(self, *, host: str) -> None: ...


class CeleryDispatcher:
    """Tasks carry the request (ids and parameters), JSON only, signed for one host, with an
    expiry both in Celery's header and inside the signature (a header can be stripped)."""

    def __init__(self, redis_url: str, keys: KeyStore) -> None:
        self.redis_url = redis_url
        self.keys = keys

    @cached_property
    def celery(self) -> Celery:
        app = Celery("fleettrace-controller")
        app.conf.update(celery_config(self.redis_url))
        return app

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(client_url(self.redis_url))

    def send_all(
        self, work: Sequence[Work], *, expires_s: float
    ) -> list[tuple[TraceRequest, Exception]]:
        """One job's tasks go out through pipelines of BATCH: one round trip per batch rather
        than per host (1,000 hosts: ~0.5 s instead of ~5 s of LPUSHes and client set-ups)."""
        key = self.keys.signing_key()
        with self.celery.producer_or_acquire() as producer:
            for start in range(0, len(work), BATCH):
                try:
                    with producer.batch(max_size=BATCH):
                        for host, request in work[start : start + BATCH]:
                            self._publish(producer, key, host, request, expires_s)
                except BROKER_DOWN as exc:
                    return [(request, exc) for _, request in work[start:]]
        for host, request in work:
            log.info("run %s (job %s): queued for %s", request.run_id, request.job_id, host)
        return []

    def send(self, *, host: str, request: TraceRequest, expires_s: float) -> None:
        """One task; raises what kept it from Redis."""
        unsent = self.send_all([(host, request)], expires_s=expires_s)
        if unsent:
            raise unsent[0][1]

    def _publish(
        self,
        producer: Producer,
        key: Ed25519PrivateKey,
        host: str,
        request: TraceRequest,
        expires_s: float,
    ) -> None:
        envelope = sign(
            key,
            host=host,
            run_id=request.run_id,
            action="run",
            payload=request.model_dump(mode="json"),
            ttl_s=expires_s,
        )
        self.celery.send_task(
            TASK_RUN_TRACE,
            args=[envelope.model_dump(mode="json")],
            queue=host_queue(host),
            routing_key=host_queue(host),
            expires=expires_s,
            task_id=request.run_id,
            producer=producer,
            retry=False,  # a batch only buffers here: its flush fails or not, as a whole
            # Celery would otherwise build a repr of the whole signed envelope for its logs.
            argsrepr=f"run {request.run_id}",
            kwargsrepr="{}",
        )

    def request_cancel(self, *, host: str, run_id: str) -> None:
        """The cancel key's value is the signed cancel: an agent acts only on one that verifies."""
        envelope = sign(
            self.keys.signing_key(),
            host=host,
            run_id=run_id,
            action="cancel",
            payload={},
            ttl_s=CANCEL_TTL_S,
        )
        self.redis.set(cancel_key(host, run_id), envelope.model_dump_json(), ex=CANCEL_TTL_S)

    def forget_host(self, *, host: str) -> None:
        """Drop a deleted host's queue: no agent will consume what waits there."""
        queue = host_queue(host)
        # kombu's Redis transport: the list itself, one list per priority, the binding set.
        keys = [queue, *(f"{queue}{PRIORITY_SEP}{p}" for p in range(1, 10))]
        removed = self.redis.delete(*keys, f"_kombu.binding.{queue}")
        log.info("host %s: deleted, its queue dropped (%d keys)", host, removed)
