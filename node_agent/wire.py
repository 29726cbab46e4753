"""Names shared by controller and agents: queues, task names, Redis keys, Celery config."""

from __future__ import annotations

from typing import Any

TASK_RUN_TRACE = "fleettrace.run_trace"
EVENTS_STREAM = "fleettrace:events"
EVENTS_STREAM_MAXLEN = 1_000_000
CANCEL_TTL_S = 24 * 3600


def host_queue(host: str) -> str:
    return f"host.{host}"


def cancel_key(host: str, run_id: str) -> str:
    """Per host, so that a host's Redis identity can read its own cancels and no other's."""
    return f"fleettrace:cancel:{host}:{run_id}"


def broker_url(redis_url: str) -> str:
    """The same Redis, spelled as kombu wants it (its socket scheme differs from redis-py's)."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url.removeprefix("unix://")
    return redis_url


def client_url(redis_url: str) -> str:
    """The same Redis, spelled as redis-py wants it."""
    if redis_url.startswith("redis+socket://"):
        return "unix://" + redis_url.removeprefix("redis+socket://")
    return redis_url


def celery_config(redis_url: str) -> dict[str, Any]:
    """JSON only (agents run as root: never pickle), no result backend, no remote control."""
    return {
        "broker_url": broker_url(redis_url),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        "worker_prefetch_multiplier": 1,
        "task_acks_late": False,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        # No broadcast commands (shutdown, pool changes, revoke) reach a worker through Redis.
        "worker_enable_remote_control": False,
        "task_default_queue": "fleettrace.default",
        "broker_transport_options": {"visibility_timeout": 4 * 3600},
    }
