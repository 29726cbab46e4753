"""Each host's own Redis identity: an ACL user that may consume its queue and append to its
stream, and nothing else. The controller makes, rotates and removes it with the host.

The secret is shown once when issued; the controller keeps only its SHA-256 (as Redis does),
enough to put the user back after a Redis restart and never enough to act as the host.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis

from controller.errors import ControllerError
from node_agent.wire import (
    AGENT_USER_PREFIX,
    agent_url,
    agent_user,
    cancel_key,
    client_url,
    events_stream,
    host_queue,
    unacked_keys,
    valid_host,
    without_credentials,
)

if TYPE_CHECKING:
    from controller.hosts.models import Host

log = logging.getLogger(__name__)
# Bumped when a host is added or removed: ingest reads the new set of streams at once.
HOSTS_VERSION_KEY = "fleettrace:hosts:version"

# What kombu's Redis transport and the agent need: BRPOP on the queue, LPUSH/RPUSH to put
# an unacked task back, SADD/SMEMBERS on its binding, the unacked hash/index/mutex, XADD,
# GET/EXISTS of its cancel flags; MULTI/WATCH for kombu's restore transaction; EVALSHA and
# SCRIPT LOAD for redis-py's lock (a script runs with its caller's rights: same keys only).
AGENT_COMMANDS = (
    "+ping",
    "+auth",
    "+hello",
    "+client|setname",
    "+brpop",
    "+lpush",
    "+rpush",
    "+rpop",
    "+llen",
    "+srem",
    "+zrange",
    "+zrangebyscore",
    "+pexpire",
    "+sadd",
    "+smembers",
    "+hset",
    "+hget",
    "+hdel",
    "+zadd",
    "+zrem",
    "+zrevrangebyscore",
    "+set",
    "+get",
    "+del",
    "+exists",
    "+multi",
    "+exec",
    "+discard",
    "+watch",
    "+unwatch",
    "+xadd",
    "+evalsha",
    "+script|load",
)


class IdentityUnavailable(ControllerError):
    """Redis could not be told about a host's identity."""

    status = 503


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def agent_keys(host: str) -> list[str]:
    """The only keys a host's identity may touch (exact names but its cancel flags)."""
    queue = host_queue(host)
    return [
        queue,
        f"_kombu.binding.{queue}",
        f"_kombu.binding_permanent.{queue}",
        *unacked_keys(host).values(),
        events_stream(host),
    ]


def acl_rules(host: str, secret_sha256: str) -> list[str]:
    """ACL SETUSER's arguments for a host's identity, from scratch (reset)."""
    if not valid_host(host):
        raise ValueError(f"not a host name: {host!r}")
    # Host names hold no glob character and no colon, so `:*` cannot reach another host.
    cancels = cancel_key(host, "*")
    return [
        "reset",
        "on",
        f"#{secret_sha256}",
        "resetchannels",
        "-@all",
        *AGENT_COMMANDS,
        *(f"~{key}" for key in agent_keys(host)),
        f"%R~{cancels}",
    ]


@dataclass(frozen=True)
class Credential:
    """A host's newly issued identity: shown once, never stored."""

    host: str
    redis_url: str

    @property
    def join_command(self) -> str:
        """One line that joins the host (the URL in the environment, not in `ps`)."""
        url = shlex.quote(self.redis_url)
        return f"FLEETTRACE_REDIS_URL={url} fleettrace-agent worker --host {self.host}"


class Identities:
    """The controller's hand on agents' ACL users (its own Redis URL can manage ACLs)."""

    def __init__(self, redis_url: str, agents_url: str) -> None:
        self.redis_url = redis_url
        self.agents_url = agents_url

    @cached_property
    def client(self) -> redis.Redis:
        return redis.Redis.from_url(client_url(self.redis_url))

    def new_secret(self, host: str) -> tuple[str, Credential]:
        """(sha256 to keep, the credential to show once) for a host."""
        secret = secrets.token_urlsafe(32)
        return digest(secret), Credential(host, agent_url(self.agents_url, host, secret))

    def holds(self, host: Host, url: str | None) -> bool:
        """Whether `url` is the host's current identity, at the agents' Redis."""
        if not url or host.agent_secret_sha256 is None:
            return False
        try:
            parts = urlsplit(url)
            secret, user = parts.password, parts.username
        except ValueError:
            return False
        return (
            user == agent_user(host.name)
            and secret is not None
            and without_credentials(url) == self.agents_url
            and hmac.compare_digest(digest(secret), host.agent_secret_sha256)
        )

    def ensure(self, host: str, secret_sha256: str) -> None:
        """The host's ACL user as it should be, connections left alone (nothing rotated)."""
        try:
            apply(self.client, host, secret_sha256)
        except redis.RedisError as exc:
            raise IdentityUnavailable(f"Redis unavailable for {host}'s identity: {exc}") from None

    def apply(self, host: str, secret_sha256: str) -> None:
        """Make or rotate the host's ACL user; connections made with an old secret end."""
        try:
            apply(self.client, host, secret_sha256)
            _command(self.client, "CLIENT", "KILL", "USER", agent_user(host))
        except redis.ResponseError as exc:
            if "No such user" not in str(exc):
                raise IdentityUnavailable(f"Redis refused {host}'s identity: {exc}") from None
        except redis.RedisError as exc:
            raise IdentityUnavailable(f"Redis unavailable for {host}'s identity: {exc}") from None
        log.info("host %s: Redis identity %s issued", host, agent_user(host))

    def revoke(self, host: str, *, forget: bool = False) -> None:
        """Remove the host's ACL user (its connections end); with forget, its stream too."""
        try:
            revoke(self.client, host)
            if forget:
                self.client.delete(events_stream(host))
        except redis.RedisError as exc:
            # Ingest's reconcile removes it once Redis answers again.
            log.warning("host %s: cannot remove its Redis identity yet: %s", host, exc)
            return
        log.info("host %s: Redis identity %s removed", host, agent_user(host))

    def hosts_changed(self) -> None:
        try:
            self.client.incr(HOSTS_VERSION_KEY)
        except redis.RedisError as exc:
            log.warning("cannot tell ingest that hosts changed (it will see it soon): %s", exc)

    def close(self) -> None:
        if "client" in vars(self):
            self.client.close()


def apply(client: redis.Redis, host: str, secret_sha256: str) -> None:
    _command(client, "ACL", "SETUSER", agent_user(host), *acl_rules(host, secret_sha256))


def revoke(client: redis.Redis, host: str) -> None:
    _command(client, "ACL", "DELUSER", agent_user(host))
    client.incr(HOSTS_VERSION_KEY)


def reconcile(client: redis.Redis, known: Mapping[str, str | None]) -> None:
    """Make Redis' agent users match the hosts the controller knows (after a Redis restart,
    or a removal Redis missed): a missing user is made again from its stored SHA-256."""
    users = {_text(u) for u in _command(client, "ACL", "USERS")}
    ours = {u for u in users if u.startswith(AGENT_USER_PREFIX)}
    wanted = {agent_user(h): (h, d) for h, d in known.items() if d and valid_host(h)}
    for user in sorted(ours - set(wanted)):
        _command(client, "ACL", "DELUSER", user)
        log.info("removed Redis identity %s: no such host", user)
    for user in sorted(set(wanted) - ours):
        host, secret_sha256 = wanted[user]
        apply(client, host, secret_sha256)
        log.info("host %s: Redis identity %s put back", host, user)


def _command(client: redis.Redis, *args: str) -> Any:
    """A raw command (ACL and CLIENT KILL USER: redis-py's helpers differ across versions)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
