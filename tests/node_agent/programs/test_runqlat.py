"""runqlat against CPU hogs pinned to one CPU and a process whose wakeups are known."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from node_agent.protocol import Log2Histogram, Scope, TraceRequest
from tests.helpers import go, run_trace, spawn_waiting

pytestmark = pytest.mark.bcc

CPU = min(os.sched_getaffinity(0))
# Busy for a bounded time on one CPU, with no syscalls once started: only preemption
# takes it off the CPU, so its run-queue waits come from the preempted path.
HOG = (
    "import os, sys, time\n"
    f"os.sched_setaffinity(0, {{{CPU}}})\n"
    "sys.stdin.readline()\n"
    "end = time.monotonic() + 2.5\n"
    "while time.monotonic() < end: pass\n"
)
SLEEPS = 200
SLEEPER = f"import sys, time\nsys.stdin.readline()\nfor _ in range({SLEEPS}): time.sleep(0.001)\n"


def _request(name: str, **fields: Any) -> TraceRequest:
    return TraceRequest(run_id=f"runqlat-{name}", program="runqlat", duration_s=2, **fields)


def _waited_at_least(hist: Log2Histogram, slot: int) -> int:
    return sum(count for s, count in hist.buckets if s >= slot)


def test_per_pid_shows_only_the_scoped_process(procs: list[subprocess.Popen[str]]) -> None:
    procs += [spawn_waiting(HOG) for _ in range(3)]
    scoped = procs[0]
    request = _request("pid", params={"per": "pid"}, scope=Scope(pid=scoped.pid))
    outcome = run_trace(request, lambda: go(procs))
    assert outcome.final.state.value == "succeeded", outcome.final
    hists = outcome.histograms()
    assert [h.labels["pid"] for h in hists] == [scoped.pid]
    (hist,) = hists
    assert hist.name == "runqlat" and hist.unit == "usec"
    assert str(hist.labels["comm"]).startswith("python")
    # Three hogs share one CPU: the scoped one is preempted over and over and waits
    # about a time slice (milliseconds) each time.
    assert hist.total >= 20
    assert _waited_at_least(hist, 10) >= hist.total // 2  # slot 10 starts at 512 us


def test_per_cgroup_scoped_to_a_cgroup(
    make_cgroup: Callable[[str], Path],
    procs: list[subprocess.Popen[str]],
) -> None:
    group = make_cgroup("runqlat")
    procs += [spawn_waiting(HOG) for _ in range(3)]
    (group / "cgroup.procs").write_text(str(procs[0].pid))
    request = _request("cg", params={"per": "cgroup"}, scope=Scope(cgroup=group.name))
    outcome = run_trace(request, lambda: go(procs))
    hists = outcome.histograms()
    assert [h.labels for h in hists] == [
        {"cgroup": f"/{group.name}", "cgroup_id": os.stat(group).st_ino}
    ]
    assert hists[0].total >= 20


def test_wakeups_are_charged_to_the_woken_task(procs: list[subprocess.Popen[str]]) -> None:
    procs.append(spawn_waiting(SLEEPER))
    request = _request("wake", scope=Scope(pid=procs[0].pid))
    outcome = run_trace(request, lambda: go(procs))
    hists = outcome.histograms()
    assert [h.labels for h in hists] == [{}]
    # One wait per sleep's wakeup, plus the stdin wakeup and a few preemptions (a sleep
    # whose deadline passed before it blocked has none). The waker is whoever fires the
    # timer, so the count only reaches this if each wait is charged to the woken task.
    assert SLEEPS * 9 // 10 <= hists[0].total <= SLEEPS + SLEEPS // 5


def test_unscoped_per_pid_in_msec_sees_every_hog(procs: list[subprocess.Popen[str]]) -> None:
    procs += [spawn_waiting(HOG) for _ in range(3)]
    request = _request("all", params={"per": "pid", "unit": "msec"})
    outcome = run_trace(request, lambda: go(procs))
    by_pid = {h.labels["pid"]: h for h in outcome.histograms()}
    assert 0 not in by_pid  # the idle task never counts
    for proc in procs:
        assert by_pid[proc.pid].unit == "msec"
        assert _waited_at_least(by_pid[proc.pid], 2) > 0  # slot 2: 2-3 ms
