"""The agent's own stats on process trees the tests make: memory and CPU of every descendant,
exited ones' CPU included, and the record of traces."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from node_agent import selfstats
from node_agent.protocol import ErrorCode, RunState, StateChange, TraceError
from node_agent.selfstats import SelfStats, family

MIB = 1024 * 1024

BURN = "import time\nend = time.process_time() + {}\nwhile time.process_time() < end: pass"
# Each level holds `mb` MiB it has written (resident), burns `burn_s` of CPU in a child it
# reaps, starts the next level (the same script, from the environment) and says "ready" once
# that one has; it ends when its stdin closes.
LEVEL = f"""
import os, subprocess, sys
mb, burn_s, rest = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
held = b"\\x01" * (mb << 20)
if burn_s:
    subprocess.run([sys.executable, "-c", {BURN!r}.format(burn_s)], check=True)
child = None
if rest:
    child = subprocess.Popen(
        [sys.executable, "-c", os.environ["LEVEL"], *rest],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
    )
    child.stdout.readline()
print("ready", flush=True)
sys.stdin.readline()
if child:
    child.stdin.close()
    child.wait()
"""


@contextmanager
def tree(levels: list[tuple[int, float]]) -> Iterator[subprocess.Popen[bytes]]:
    """A chain of processes, one per (MiB held, CPU seconds burnt in a reaped child)."""
    argv = [str(x) for level in levels for x in level]
    root = subprocess.Popen(
        [sys.executable, "-c", LEVEL, *argv],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        env={**os.environ, "LEVEL": LEVEL},
    )
    assert root.stdout is not None and root.stdin is not None
    try:
        assert root.stdout.readline() == b"ready\n"
        yield root
    finally:
        root.stdin.close()
        root.wait(timeout=30)


def vm_rss(pid: int) -> int:
    """VmRSS from /proc/<pid>/status, as `ps` shows it (the tests' own reading)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_the_sum_covers_the_root_and_every_descendant_with_their_memory() -> None:
    with tree([(40, 0), (30, 0), (20, 0)]) as root:
        pids = family(root.pid)
        assert len(pids) == 3 and pids[0] == root.pid
        stats = SelfStats(root=root.pid).collect(programs_loaded=0)
        measured = sum(vm_rss(pid) for pid in pids)
    assert stats.rss_bytes >= 90 * MIB
    assert abs(stats.rss_bytes - measured) < 2 * MIB, (stats.rss_bytes, measured)
    assert stats.pss_bytes is not None
    assert 90 * MIB <= stats.pss_bytes <= stats.rss_bytes


def test_without_the_kernels_children_files_a_scan_of_proc_finds_the_same_family(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with tree([(1, 0), (1, 0), (1, 0)]) as root:
        listed = family(root.pid)
        monkeypatch.setattr(selfstats, "CHILDREN_FILES", False)
        assert sorted(family(root.pid)) == sorted(listed)
        assert len(listed) == 3


def test_cpu_counts_exited_children_of_descendants_and_of_the_agent_itself() -> None:
    with tree([(1, 0), (1, 0.6)]) as root:
        # The second level reaped a child that burnt 0.6 s: that is in its own reaped time.
        assert SelfStats(root=root.pid).collect(programs_loaded=0).cpu_seconds_total >= 0.55
    own = SelfStats()
    before = own.collect(programs_loaded=0).cpu_seconds_total
    subprocess.run(
        [sys.executable, "-c", BURN.format(0.4)], check=True
    )  # exits, reaped: RUSAGE_CHILDREN
    after = own.collect(programs_loaded=0).cpu_seconds_total
    assert after - before >= 0.38


def test_cpu_never_goes_back_while_children_come_and_go() -> None:
    own = SelfStats()
    seen = [own.collect(programs_loaded=0).cpu_seconds_total]
    for _ in range(15):
        child = subprocess.Popen([sys.executable, "-c", "sum(range(300000))"])
        seen.append(own.collect(programs_loaded=0).cpu_seconds_total)
        child.wait()
        seen.append(own.collect(programs_loaded=0).cpu_seconds_total)
    assert seen == sorted(seen)
    assert seen[-1] > seen[0]


def test_a_process_gone_between_listing_and_reading_is_left_out() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert selfstats.process_cost(child.pid) is None
    assert selfstats.pss_bytes(child.pid) is None


def _final(run: str, state: RunState, **kw: object) -> StateChange:
    return StateChange.model_validate({"run_id": run, "state": state, **kw})


def test_traces_are_counted_as_they_end_and_the_last_failure_is_named() -> None:
    stats = SelfStats()
    ended = [
        _final("r1", RunState.succeeded),
        _final("r2", RunState.failed, error=TraceError(code=ErrorCode.policy, message="no custom")),
        _final("r3", RunState.cancelled, reason="cancelled before start"),
        _final("r4", RunState.timed_out, reason="overran"),
        _final("r5", RunState.succeeded),
    ]
    t0 = time.time()
    for final in ended:
        stats.trace_ended(final)
    got = stats.collect(programs_loaded=2)
    assert (got.traces_run_total, got.traces_failed_total, got.programs_loaded) == (5, 2, 2)
    assert got.last_error == "run r4: timed_out: overran"
    assert got.last_error_at is not None and got.last_error_at.timestamp() >= t0 - 1


def test_a_hostile_failure_message_is_one_printable_bounded_line() -> None:
    stats = SelfStats()
    message = "\x1b]0;PWNED\x07\nsecond line " + "x" * 5000
    stats.trace_ended(
        _final("r1", RunState.failed, error=TraceError(code=ErrorCode.internal, message=message))
    )
    error = stats.collect(programs_loaded=0).last_error
    assert error is not None and len(error) <= 500
    assert error.startswith("run r1: internal: \\x1b]0;PWNED\\x07\\nsecond line")
    assert error.isprintable()


def test_pss_is_read_at_most_once_per_period_and_reported_in_between(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with tree([(8, 0), (8, 0)]) as root:
        stats = SelfStats(root=root.pid, pss_every_s=3600)
        first = stats.collect(programs_loaded=0).pss_bytes
        assert first is not None and first >= 16 * MIB

        def walked(pid: int) -> int:
            raise AssertionError("PSS read again within its period")

        monkeypatch.setattr(selfstats, "pss_bytes", walked)
        assert stats.collect(programs_loaded=0).pss_bytes == first
        with pytest.raises(AssertionError, match="PSS read again"):
            SelfStats(root=root.pid, pss_every_s=0).collect(programs_loaded=0)
