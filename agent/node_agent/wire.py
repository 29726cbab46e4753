"""Names shared by controller and agents: queues, task names, Redis keys, Celery config."""

from __future__ import annotations

import re
from typing import Any

TASK_RUN_TRACE = "fleettrace.run_trace"
EVENTS_STREAM_PREFIX = "fleettrace:events:"
# Per host: the last resort bound while ingest is away (ingest trims what it acked).
EVENTS_STREAM_MAXLEN = 100_000
CANCEL_TTL_S = 24 * 3600
# A host name is a Redis key part, an ACL user name and a URL user: no glob, space or colon.
HOST_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_HOST_NAME = re.compile(HOST_NAME_PATTERN)
AGENT_USER_PREFIX = "ft-host-"


def valid_host(name: str) -> bool:
    return bool(_HOST_NAME.fullmatch(name))


def host_queue(host: str) -> str:
    return f"host.{host}"


def events_stream(host: str) -> str:
    """Each host appends to its own stream: the stream an event came on names its host."""
    return f"{EVENTS_STREAM_PREFIX}{host}"


def cancel_key(host: str, run_id: str) -> str:
    """Per host, so that a host's Redis identity can read its own cancels and no other's."""
    return f"fleettrace:cancel:{host}:{run_id}"


def agent_user(host: str) -> str:
    """The Redis ACL user of a host's agent."""
    return f"{AGENT_USER_PREFIX}{host}"


def unacked_keys(host: str) -> dict[str, str]:
    """kombu's ack-emulation keys, per host: an agent may touch its own, never another's."""
    base = f"fleettrace:unacked:{host}"
    return {
        "unacked_key": base,
        "unacked_index_key": f"{base}:index",
        "unacked_mutex_key": f"{base}:mutex",
    }


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


def agent_url(base_url: str, host: str, secret: str) -> str:
    """A host's own Redis URL: the agents' view of Redis with the host's user and secret."""
    scheme, sep, rest = base_url.partition("://")
    if not sep or without_credentials(base_url) != base_url:
        raise ValueError("the agents' Redis URL must name no user or password")
    return f"{scheme}://{agent_user(host)}:{secret}@{rest}"


def without_credentials(url: str) -> str:
    """A Redis URL without its user and password."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    where, slash, path = rest.partition("/")
    if "@" in where:
        where = where.rsplit("@", 1)[1]
    return f"{scheme}://{where}{slash}{path}"


def celery_config(redis_url: str, *, host: str | None = None) -> dict[str, Any]:
    """JSON only (agents run as root: never pickle), no result backend, one task at a time
    each, no remote control (no broadcast reaches a worker through Redis).

    With `host`, the config of that host's agent: only the keys its Redis ACL user may touch
    (its queue without priority sub-queues, its own unacked keys, no remote control).
    """
    transport: dict[str, Any] = {"visibility_timeout": 4 * 3600, "priority_steps": [0]}
    if host is not None:
        transport.update(unacked_keys(host))
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
        "broker_transport_options": transport,
    }
