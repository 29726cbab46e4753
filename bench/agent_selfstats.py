"""What the agent's own stats cost its heartbeat: CPU per beat to read them from /proc.

Side by side in the same run with the baseline every beat already paid: building and
serialising a Heartbeat without stats. The process tree is shaped like an idle agent's (a
worker holding ~64 MiB and its warm spare ~95 MiB, written so it is resident). PSS (a walk
of every page) is read at most once a minute, so a beat pays it once in 60 / heartbeat_s.

    .venv/bin/python bench/agent_selfstats.py [--n 300] [--heartbeat-s 10] [--json]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import _main

from node_agent.protocol import Heartbeat
from node_agent.selfstats import PSS_EVERY_S, SelfStats

HOLD = "import sys; held = b'\\x01' * ({} << 20); print('ready', flush=True); sys.stdin.read()"


def cpu_ms(n: int, act: Callable[[], object]) -> list[float]:
    """CPU (user + system) ms of each of n calls."""
    samples = []
    for _ in range(n):
        started = time.process_time()
        act()
        samples.append((time.process_time() - started) * 1000)
    return samples


def main() -> int:
    parser = _main.options(__doc__)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--heartbeat-s", type=float, default=10.0)
    args = parser.parse_args()
    spare = subprocess.Popen(
        [sys.executable, "-c", HOLD.format(95)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert spare.stdout is not None and spare.stdin is not None
    spare.stdout.readline()
    held = b"\x01" * (64 << 20)  # this process plays the worker
    try:
        cached = SelfStats()
        walked = SelfStats(pss_every_s=0)
        cached.collect(programs_loaded=0)

        def beat(stats: SelfStats | None) -> str:
            agent = None if stats is None else stats.collect(programs_loaded=0)
            return Heartbeat(host="web-1", agent_version="0.1.0", agent=agent).model_dump_json()

        rows = {
            "baseline: heartbeat without stats": cpu_ms(args.n, lambda: beat(None)),
            "heartbeat with stats (PSS cached)": cpu_ms(args.n, lambda: beat(cached)),
            "heartbeat with stats (PSS read)": cpu_ms(args.n, lambda: beat(walked)),
        }
        rss = cached.collect(programs_loaded=0).rss_bytes
    finally:
        spare.stdin.close()
        spare.wait()
        del held
    means = {name: statistics.mean(s) for name, s in rows.items()}
    base = means["baseline: heartbeat without stats"]
    pss_share = min(1.0, args.heartbeat_s / PSS_EVERY_S)
    per_beat = (
        means["heartbeat with stats (PSS cached)"] * (1 - pss_share)
        + means["heartbeat with stats (PSS read)"] * pss_share
    )
    cpu_pct = 100 * per_beat / 1000 / args.heartbeat_s
    if args.json:
        doc = {"n": args.n, "mean_cpu_ms": means, "per_beat_ms": per_beat, "cpu_pct": cpu_pct}
        json.dump({**doc, "rss_bytes": rss, "pid": os.getpid()}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    out = sys.stdout.write
    out(f"one heartbeat, mean CPU of {args.n} (ms); tree of {rss / 2**20:.0f} MiB resident\n")
    for name in rows:
        out(f"{name:<36} {means[name]:>8.3f}  x{means[name] / base:>6.1f}\n")
    out(
        f"at one beat per {args.heartbeat_s:g} s, PSS read every {PSS_EVERY_S:g} s:"
        f" {per_beat:.3f} ms a beat, {cpu_pct:.4f} % of one CPU\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
