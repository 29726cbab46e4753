"""The overhead guard: what a trace costs its host, and a trace past its budget stops itself."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from node_agent.errors import LimitExceeded
from node_agent.overhead import OverheadMeter, Reading, program_stats
from node_agent.protocol import (
    ErrorCode,
    Limits,
    RunEvent,
    RunState,
    Scope,
    Snapshot,
    StateChange,
    TraceRequest,
)
from node_agent.runtime.fake import FakeRuntime
from node_agent.trace import execute, prepare
from tests.helpers import loaded_bpf_programs, row_value, run_trace, snapshots_of


class Clock:
    """Readings a test sets by hand: seconds of wall time, of BPF time and of our CPU."""

    def __init__(self) -> None:
        self.now = Reading(at=0.0, bpf_ns=0, runs=0, cpu_s=0.0)

    def advance(self, wall_s: float, bpf_s: float, cpu_s: float = 0.0, runs: int = 0) -> None:
        n = self.now
        self.now = Reading(
            n.at + wall_s, n.bpf_ns + int(bpf_s * 1e9), n.runs + runs, n.cpu_s + cpu_s
        )

    def read(self) -> Reading:
        return self.now


def test_the_budget_is_judged_over_the_window_not_one_spike() -> None:
    clock = Clock()
    meter = OverheadMeter(clock.read)
    clock.advance(1, bpf_s=0.5, runs=1000)  # one second at 50 %
    meter.sample()
    assert meter.over_budget(10) is None, "less than a window seen: no verdict yet"
    for _ in range(3):
        clock.advance(1, bpf_s=0.01)  # then 1 %
        meter.sample()
    assert meter.over_budget(10) is None, "the spike left the window"
    for _ in range(3):
        clock.advance(1, bpf_s=0.05, cpu_s=0.03, runs=500_000)
        meter.sample()
    why = meter.over_budget(5)
    assert why == "overhead 8.0 % of a CPU > budget 5 % (500,000 events/s over the last 3.0 s)"
    total = meter.total()
    assert (total.wall_s, total.bpf_runs) == (7.0, 1_501_000)
    assert total.percent == pytest.approx(100 * (0.5 + 0.03 + 0.15 + 0.09) / 7)


def test_a_trace_over_budget_stops_with_the_reason_and_its_results() -> None:
    request = TraceRequest(
        run_id="o1", program="syscalls", duration_s=30, limits=Limits(overhead_pct=10)
    )
    events: list[RunEvent] = []
    started = time.monotonic()
    state = execute(prepare(request), FakeRuntime(cost_pct=30), events.append, threading.Event())
    assert time.monotonic() - started < 10, "stopped long before its deadline"
    assert state is RunState.failed
    *_, last, change = events
    assert isinstance(last, Snapshot) and last.final
    assert last.stats.overhead_pct == pytest.approx(30, abs=1)
    assert isinstance(change, StateChange) and change.error is not None
    assert change.error.code is ErrorCode.limit_exceeded
    assert change.error.message.startswith("overhead 30.0 % of a CPU > budget 10 %")


def test_a_trace_within_budget_runs_to_its_end_and_reports_its_cost() -> None:
    request = TraceRequest(
        run_id="o2", program="syscalls", duration_s=3.5, limits=Limits(overhead_pct=10)
    )
    events: list[RunEvent] = []
    state = execute(prepare(request), FakeRuntime(cost_pct=4), events.append, threading.Event())
    assert state is RunState.succeeded
    last = snapshots_of(events)[-1]
    assert last.stats.overhead_pct == pytest.approx(4, abs=0.5)
    assert last.stats.bpf_runs > 0 and last.stats.events_per_s > 0


def test_a_job_cannot_raise_its_budget_past_the_agents_maximum() -> None:
    request = TraceRequest(
        run_id="o3", program="syscalls", duration_s=1, limits=Limits(overhead_pct=80)
    )
    with pytest.raises(LimitExceeded, match=r"^limits.overhead_pct: 80 % is above"):
        prepare(request, max_overhead_pct=50)


# -- for real ---------------------------------------------------------------------------------


@pytest.mark.bcc
def test_real_programs_report_their_kernel_run_time_and_count() -> None:
    """N getppid calls traced: the kernel ran our program at least N times and says how long."""
    calls = 20_000
    pid = os.getpid()
    request = TraceRequest(run_id="o4", program="syscalls", duration_s=3, scope=Scope(pid=pid))

    def workload() -> None:
        for _ in range(calls):
            os.getppid()

    outcome = run_trace(request, workload)
    assert outcome.final.state is RunState.succeeded
    assert row_value(outcome.table(), syscall="getppid") == calls
    stats = outcome.last.stats
    assert stats.bpf_runs >= calls, "the program runs on every syscall of the host"
    assert stats.bpf_run_time_s > 0
    assert stats.overhead_pct is not None and stats.overhead_pct > 0


@pytest.mark.bcc
def test_a_real_syscall_storm_over_budget_is_stopped_and_unloaded() -> None:
    before = loaded_bpf_programs()
    storm_ends = time.monotonic() + 120

    def storm() -> None:  # bounded: the trace (60 s) would outlast it if the guard failed
        while time.monotonic() < storm_ends and not ended.is_set():
            for _ in range(10_000):
                os.getppid()

    ended = threading.Event()
    request = TraceRequest(
        run_id="o5",
        program="syscalls",
        duration_s=60,
        interval_s=1,
        limits=Limits(overhead_pct=0.5),
    )
    outcome = run_trace(request, storm, on_final=ended.set)
    assert outcome.final.state is RunState.failed
    assert outcome.final.error is not None
    assert outcome.final.error.code is ErrorCode.limit_exceeded
    assert " % of a CPU > budget 0.5 % (" in outcome.final.error.message
    running = outcome.running
    assert outcome.last.final
    assert outcome.last.interval_end - running.at < 30, "stopped by the guard, not the deadline"
    assert outcome.last.stats.overhead_pct is not None and outcome.last.stats.overhead_pct > 0.5
    assert row_value(outcome.table(), syscall="getppid") > 0, "partial results kept"
    deadline = time.monotonic() + 5
    while {i for i in loaded_bpf_programs() if i not in before} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert {i for i in loaded_bpf_programs() if i not in before} == set()


def test_program_stats_reads_nothing_without_programs(tmp_path: Path) -> None:
    (tmp_path / "3").write_text("pos:\t0\nflags:\t02\nmnt_id:\t15\n")
    (tmp_path / "4").write_text(
        "pos:\t0\nflags:\t02000002\nprog_type:\t17\nprog_id:\t50\nrun_time_ns:\t1200\nrun_cnt:\t7\n"
    )
    (tmp_path / "5").write_text("prog_id:\t51\nrun_time_ns:\t800\nrun_cnt:\t3\n")
    assert program_stats(tmp_path) == (2000, 10)
