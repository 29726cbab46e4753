"""Ingest consumers in the hosts' stream group: one name per process, dead ones forgotten.

Several controllers (or `fleettrace ingest` processes) share one consumer group, each under its
own name: two processes under one name would share a pending list and re-read each other's
entries. A killed process leaves its name behind with the entries it had read and not acked;
the others claim those (XAUTOCLAIM after `ingest_claim_idle_ms`), and once its pending list is
empty and it has been silent for long, its name leaves the group.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from typing import Any

import redis

from node_agent.wire import events_stream

log = logging.getLogger(__name__)
# A consumer silent this long with nothing pending is gone (live ones read every second).
FORGET_IDLE_MS = 3_600_000

# Atomic per stream: a consumer that reads between a check and its deletion would lose the
# entries it just read (DELCONSUMER drops its pending list).
_FORGET = """
local gone = {}
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local fields = {}
  for i = 1, #consumer, 2 do fields[consumer[i]] = consumer[i + 1] end
  if fields['name'] ~= ARGV[3] and tonumber(fields['pending']) == 0
      and tonumber(fields['idle']) > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], fields['name'])
    table.insert(gone, fields['name'])
  end
end
return gone
"""


def default_name() -> str:
    """This process's consumer name: unique per host and process, readable in XINFO."""
    return f"{socket.gethostname()}-{os.getpid()}"


def forget_dead(
    client: redis.Redis,
    hosts: Sequence[str],
    *,
    group: str,
    me: str,
    idle_ms: int = FORGET_IDLE_MS,
) -> int:
    """Remove from the group, on each host's stream, the consumers with nothing pending that
    have been idle longer than `idle_ms` (never `me`); returns how many names went."""
    if not hosts:
        return 0
    forget = client.register_script(_FORGET)
    pipe = client.pipeline(transaction=False)
    for host in hosts:
        forget(keys=[events_stream(host)], args=[group, idle_ms, me], client=pipe)
    gone: dict[str, int] = {}
    for host, reply in zip(hosts, pipe.execute(raise_on_error=False), strict=True):
        if isinstance(reply, Exception):  # the stream or group is gone: nothing to forget
            log.debug("ingest: cannot list %s's consumers: %s", host, reply)
            continue
        for name in _names(reply):
            gone[name] = gone.get(name, 0) + 1
    for name, streams in sorted(gone.items()):
        log.info("ingest: forgot dead consumer %s on %d streams (nothing pending)", name, streams)
    return sum(gone.values())


def _names(reply: Any) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in reply or []]


def others_pending(client: redis.Redis, host: str, *, group: str, me: str) -> bool:
    """Whether a consumer other than `me` holds entries of `host`'s stream it has not acked:
    events the agent sent before its latest ones (a dead peer's, claimed after the idle time)."""
    try:
        found: Any = client.xinfo_consumers(events_stream(host), group)
    except redis.RedisError:
        return False  # cannot tell: judge by what was read
    return any(int(c["pending"]) > 0 and c["name"] not in (me, me.encode()) for c in found or [])
