"""How far ingest is behind the agents' event streams, read from Redis at scrape time.

A small script reads, on each host's stream, ingest's group (XINFO GROUPS: entries not yet
delivered, `lag`, and delivered ones not acked, `pending`), the stream's length, the oldest
pending entry and the oldest unread one, and returns only the sums: a scrape at 1,000 hosts
parses a few numbers rather than 3,000 replies (bench/metrics_scrape.py). It runs over
CHUNK streams at a time, so Redis is never held for long. An entry's id is the time the agent
appended it, so its age needs no clock of the agent's.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from prometheus_client.core import GaugeMetricFamily, Metric

from node_agent.wire import EVENTS_STREAM_PREFIX

SCAN_COUNT = 1000
CHUNK = 500

# -> {streams, entries, lag, pending, oldest entry not stored (ms, -1: none), unknown lags}
_READ = """
local group = ARGV[1]
local streams, entries, lag, pending, oldest, unknown = 0, 0, 0, 0, -1, 0
local function older(id)
  local ms = tonumber(string.match(id, '^(%d+)'))
  if ms and (oldest < 0 or ms < oldest) then oldest = ms end
end
for _, key in ipairs(KEYS) do
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', key)
  if ok then
    streams = streams + 1
    entries = entries + redis.call('XLEN', key)
    for _, g in ipairs(groups) do
      local f = {}
      for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
      if f['name'] == group then
        pending = pending + f['pending']
        if f['pending'] > 0 then older(redis.call('XPENDING', key, group)[2]) end
        if f['lag'] then lag = lag + f['lag'] else unknown = unknown + 1 end
        if (not f['lag']) or f['lag'] > 0 then
          local next = redis.call('XRANGE', key, '(' .. f['last-delivered-id'], '+', 'COUNT', 1)
          if #next > 0 then older(next[1][1]) end
        end
      end
    end
  end
end
return {streams, entries, lag, pending, oldest, unknown}
"""


def families(client: redis.Redis, *, group: str) -> list[Metric]:
    """Raises redis.RedisError when Redis is away."""
    keys: list[Any] = sorted(
        client.scan_iter(match=f"{EVENTS_STREAM_PREFIX}*", count=SCAN_COUNT, _type="STREAM")
    )
    read = client.register_script(_READ)
    totals = [0, 0, 0, 0, -1, 0]
    for start in range(0, len(keys), CHUNK):
        found: Any = read(keys=keys[start : start + CHUNK], args=[group])
        for i, n in enumerate(int(v) for v in found):
            if i == 4:  # the oldest of the chunks' oldest entries
                if n >= 0 and (totals[4] < 0 or n < totals[4]):
                    totals[4] = n
            else:
                totals[i] += n
    streams, entries, lag, pending, oldest_ms, unknown = totals
    now_ms = int(time.time() * 1000)
    age_s = max(0, now_ms - oldest_ms) / 1000 if oldest_ms >= 0 else 0.0
    return [
        _gauge("fleettrace_ingest_streams", "The hosts' event streams in Redis.", streams),
        _gauge(
            "fleettrace_ingest_stream_entries",
            "Entries on the hosts' event streams (acked ones stay about 10 minutes).",
            entries,
        ),
        _gauge(
            "fleettrace_ingest_lag_entries",
            "Entries on the hosts' event streams not yet delivered to the ingest group.",
            lag,
            group,
        ),
        _gauge(
            "fleettrace_ingest_pending_entries",
            "Entries delivered to the ingest group's consumers, not yet stored and acked.",
            pending,
            group,
        ),
        _gauge(
            "fleettrace_ingest_lag_seconds",
            "Age of the oldest entry the ingest group has not stored (unread or pending);"
            " 0 when none.",
            age_s,
            group,
        ),
        _gauge(
            "fleettrace_ingest_lag_unknown_streams",
            "Streams whose lag Redis cannot count (entries deleted past the group's position):"
            " their unread entries are missing from fleettrace_ingest_lag_entries.",
            unknown,
            group,
        ),
    ]


def _gauge(name: str, help_text: str, value: float, group: str | None = None) -> Metric:
    if group is None:
        return GaugeMetricFamily(name, help_text, value=value)
    metric = GaugeMetricFamily(name, help_text, labels=("group",))
    metric.add_metric([group], value)
    return metric
