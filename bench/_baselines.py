"""Baselines the benchmarks put beside our figures, in the same run: raw Redis streams with
no database, and a bare bcc child with none of our machinery around it.

Not a benchmark itself.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import redis


def raw_streams(
    client: redis.Redis, items: Sequence[tuple[str, str]], per_stream: int
) -> tuple[float, float]:
    """XADD each (stream, payload) one by one, then XREADGROUP over all the streams + XACK
    until every entry is read, as ingest reads; returns (xadd seconds, read+ack seconds).
    The streams are deleted afterwards."""
    streams = sorted({stream for stream, _ in items})
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.delete(stream)
        pipe.xgroup_create(stream, "g", id="0", mkstream=True)
    pipe.execute()
    t0 = time.perf_counter()
    for stream, payload in items:
        client.xadd(stream, {"data": payload})
    xadd_s = time.perf_counter() - t0
    reading: Any = {stream: ">" for stream in streams}
    t0 = time.perf_counter()
    read = 0
    while read < len(items):
        reply = client.xreadgroup("g", "c", reading, count=per_stream, block=1000)
        pipe = client.pipeline(transaction=False)
        for stream, entries in reply or []:
            pipe.xack(stream, "g", *[entry_id for entry_id, _ in entries])
            read += len(entries)
        pipe.execute()
    read_s = time.perf_counter() - t0
    client.delete(*streams)
    return xadd_s, read_s


def bare_child(script: str, cfg: str, timeout_s: float) -> tuple[float, str, str]:
    """Run `python -c script` with `cfg` on its stdin; the script prints one line once its
    program is loaded. Returns (seconds from spawn to that line, the line, its stderr)."""
    with tempfile.TemporaryFile(mode="w+") as stderr:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,  # a file, not a pipe: LLVM warnings cannot block the child
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(cfg)
        proc.stdin.close()
        line = proc.stdout.readline()  # printed once loaded, before cleanup
        wall = time.monotonic() - started
        proc.stdout.read()
        proc.wait(timeout=timeout_s)
        stderr.seek(0)
        return wall, line, stderr.read()
