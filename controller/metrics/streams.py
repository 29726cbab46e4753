"""How far ingest is behind the agents' event streams, read from Redis at scrape time.

Two pipelined round trips whatever the fleet's size: each host's stream's groups (XINFO
GROUPS: entries not yet delivered, `lag`, and delivered ones not acked, `pending`), its length
and its oldest pending entry; then, for streams with unread entries, the oldest unread one.
An entry's id is the time the agent appended it, so its age needs no clock of the agent's.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import redis
from prometheus_client.core import GaugeMetricFamily, Metric

from node_agent.wire import EVENTS_STREAM_PREFIX

SCAN_COUNT = 1000


def families(client: redis.Redis, *, group: str) -> list[Metric]:
    """Every consumer group found, `group` (ingest's) always, at 0 when it has no stream
    yet; raises redis.RedisError when Redis is away."""
    streams: list[Any] = sorted(
        client.scan_iter(match=f"{EVENTS_STREAM_PREFIX}*", count=SCAN_COUNT, _type="STREAM")
    )
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xinfo_groups(stream)
        pipe.xlen(stream)
    replies: list[Any] = pipe.execute(raise_on_error=False) if streams else []
    lag: dict[str, int] = defaultdict(int, {group: 0})
    pending: dict[str, int] = defaultdict(int, {group: 0})
    length = 0
    # Second round: each group's oldest pending entry (XPENDING's summary names it) and, where
    # some are unread, the first entry after the last one delivered.
    asked: list[str] = []
    pipe = client.pipeline(transaction=False)
    for i, stream in enumerate(streams):
        groups, xlen = replies[2 * i], replies[2 * i + 1]
        if isinstance(groups, Exception) or isinstance(xlen, Exception):
            continue  # the stream went away between the scan and the read
        length += int(xlen)
        info: dict[str, Any]
        for info in groups:
            name = _text(info["name"])
            pending[name] += int(info.get("pending") or 0)
            group_lag: Any = info.get("lag")
            lag[name] += int(group_lag or 0)
            if int(info.get("pending") or 0) > 0:
                pipe.xpending(stream, info["name"])
                asked.append(name)
            if group_lag is None or int(group_lag) > 0:
                delivered = _text(info["last-delivered-id"])
                pipe.xrange(stream, min=f"({delivered}", max="+", count=1)
                asked.append(name)
    oldest_ms: dict[str, int] = {}  # per group: the oldest entry it has not stored yet
    for name, reply in zip(asked, pipe.execute(raise_on_error=False) if asked else [], strict=True):
        if isinstance(reply, Exception) or not reply:
            continue
        entry_id = reply.get("min") if isinstance(reply, dict) else reply[0][0]
        if entry_id:
            _older(oldest_ms, name, entry_id)
    return _metrics(len(streams), length, lag, pending, oldest_ms, int(time.time() * 1000))


def _older(oldest_ms: dict[str, int], group: str, entry_id: bytes | str) -> None:
    ms = int(_text(entry_id).partition("-")[0])
    oldest_ms[group] = min(ms, oldest_ms.get(group, ms))


def _metrics(
    streams: int,
    length: int,
    lag: dict[str, int],
    pending: dict[str, int],
    oldest_ms: dict[str, int],
    now_ms: int,
) -> list[Metric]:
    behind = GaugeMetricFamily(
        "fleettrace_ingest_lag_entries",
        "Entries on the hosts' event streams not yet delivered to the ingest consumer group.",
        labels=("group",),
    )
    held = GaugeMetricFamily(
        "fleettrace_ingest_pending_entries",
        "Entries delivered to the group's consumers and not yet stored and acked.",
        labels=("group",),
    )
    age = GaugeMetricFamily(
        "fleettrace_ingest_lag_seconds",
        "Age of the oldest entry the group has not stored yet (unread or pending); 0 when none.",
        labels=("group",),
    )
    for group in sorted(set(lag) | set(pending)):
        behind.add_metric([group], lag[group])
        held.add_metric([group], pending[group])
        oldest = oldest_ms.get(group, now_ms)
        age.add_metric([group], max(0, now_ms - oldest) / 1000)
    return [
        GaugeMetricFamily(
            "fleettrace_ingest_streams", "The hosts' event streams in Redis.", value=streams
        ),
        GaugeMetricFamily(
            "fleettrace_ingest_stream_entries",
            "Entries on the hosts' event streams (acked ones stay about 10 minutes).",
            value=length,
        ),
        behind,
        held,
        age,
    ]


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
