"""The runner for real: deadlines, grace, cancel, kill, and nothing left loaded."""

from __future__ import annotations

import os
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from node_agent.protocol import (
    ErrorCode,
    Limits,
    RunEvent,
    RunState,
    Scope,
    TraceRequest,
)
from node_agent.runner import TraceRunner
from tests.helpers import is_running, loaded_bpf_programs, row_value, run_trace, snapshots_of

pytestmark = pytest.mark.bcc


def _settle_loaded(before: dict[int, str], timeout: float = 5.0) -> dict[int, str]:
    """Programs loaded now that were not before; the kernel frees them asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        extra = {i: n for i, n in loaded_bpf_programs().items() if i not in before}
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.1)


def test_two_second_trace_ends_at_its_deadline_and_unloads() -> None:
    before = loaded_bpf_programs()
    request = TraceRequest(run_id="deadline", program="syscalls", duration_s=2, interval_s=0.5)
    outcome = run_trace(request)
    assert outcome.final.state is RunState.succeeded
    running = outcome.running
    final = outcome.last
    assert final.final
    # The final snapshot comes at the deadline, not after the grace period.
    assert 1.9 <= final.interval_end - running.at <= 2.6
    seqs = [s.seq for s in outcome.snapshots]
    assert seqs == list(range(len(seqs))) and len(seqs) >= 4
    assert _settle_loaded(before) == {}


def test_cancel_stops_quickly_and_keeps_partial_results() -> None:
    before = loaded_bpf_programs()
    events: list[RunEvent] = []
    attached = threading.Event()

    def on_event(event: RunEvent) -> None:
        events.append(event)
        if is_running(event):
            attached.set()

    request = TraceRequest(
        run_id="cancel", program="syscalls", duration_s=60, scope=Scope(pid=os.getpid())
    )
    runner = TraceRunner(request, on_event)
    cancelled_at: list[float] = []

    def cancel_later() -> None:
        assert attached.wait(60)
        for _ in range(300):
            os.getppid()
        time.sleep(0.5)
        cancelled_at.append(time.monotonic())
        runner.cancel()

    threading.Thread(target=cancel_later, daemon=True).start()
    final = runner.run()
    ended = time.monotonic()
    assert final.state is RunState.cancelled and final.error is None
    assert ended - cancelled_at[0] < 2.0  # well under the 60 s duration and the 5 s grace
    last = snapshots_of(events)[-1]
    assert last.final
    table = next(r for r in last.results if r.kind == "counter_table")
    assert row_value(table, syscall="getppid", pid=os.getpid()) >= 300  # type: ignore[arg-type]
    assert _settle_loaded(before) == {}


STUBBORN_CHILD = textwrap.dedent(
    """
    # Loads a real program, says it is running, then ignores every way of being asked to stop.
    import signal, sys, time
    from bcc import BPF
    from node_agent.child import ChildStart
    from node_agent.protocol import RunState, StateChange
    start = ChildStart.model_validate_json(sys.stdin.readline())
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    b = BPF(text="TRACEPOINT_PROBE(raw_syscalls, sys_enter) { return 0; }")
    print(StateChange(run_id=start.request.run_id, state=RunState.running).model_dump_json(),
          flush=True)
    while True:
        time.sleep(1)
    """
)


def _stubborn(tmp_path: Path, request: TraceRequest) -> tuple[TraceRunner, dict[int, str]]:
    """A runner whose child ignores every request to stop, and the BPF programs loaded before."""
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN_CHILD)
    before = loaded_bpf_programs()
    return TraceRunner(request, lambda e: None, child_argv=[sys.executable, str(script)]), before


def test_a_child_that_ignores_the_deadline_is_killed_and_leaves_nothing(tmp_path: Path) -> None:
    request = TraceRequest(run_id="stubborn", program="syscalls", duration_s=1, grace_s=1)
    runner, before = _stubborn(tmp_path, request)
    started = time.monotonic()
    final = runner.run()
    assert final.state is RunState.timed_out
    assert final.error is not None and final.error.code is ErrorCode.killed
    assert time.monotonic() - started < 15
    assert runner.child_pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(runner.child_pid, 0)
    assert _settle_loaded(before) == {}


def test_a_child_that_ignores_cancel_is_killed_after_grace(tmp_path: Path) -> None:
    request = TraceRequest(run_id="stubborn-cancel", program="syscalls", duration_s=60, grace_s=1)
    runner, before = _stubborn(tmp_path, request)
    threading.Timer(3.0, runner.cancel).start()
    final = runner.run()
    assert final.state is RunState.cancelled
    assert final.error is not None and final.error.code is ErrorCode.killed
    assert _settle_loaded(before) == {}


def test_a_crashing_child_fails_the_run_with_its_stderr(tmp_path: Path) -> None:
    script = tmp_path / "crash.py"
    script.write_text("import sys\nsys.stderr.write('boom: segfault imminent\\n')\nsys.exit(3)\n")
    request = TraceRequest(run_id="crash", program="syscalls", duration_s=1)
    final = TraceRunner(request, lambda e: None, child_argv=[sys.executable, str(script)]).run()
    assert final.state is RunState.failed
    assert final.error is not None and "code 3" in final.error.message
    assert "boom: segfault imminent" in (final.error.detail or "")


def test_a_memory_blow_up_fails_the_run_and_the_next_trace_runs() -> None:
    request = TraceRequest(
        run_id="oom", program="syscalls", duration_s=1, limits=Limits(memory_mb=256)
    )
    outcome = run_trace(request)
    assert outcome.final.state is RunState.failed
    assert outcome.final.error is not None
    assert outcome.final.error.code is ErrorCode.limit_exceeded
    again = run_trace(TraceRequest(run_id="after-oom", program="syscalls", duration_s=1))
    assert again.final.state is RunState.succeeded


def test_map_entries_limit_drops_and_says_so() -> None:
    request = TraceRequest(
        run_id="full", program="syscalls", duration_s=1.5, limits=Limits(map_entries=16)
    )

    def many_syscalls() -> None:
        # More distinct (syscall, pid) keys than 16 entries can hold.
        for _ in range(50):
            os.getppid()
            os.getpid()
            os.stat("/")
            time.sleep(0.001)

    outcome = run_trace(request, many_syscalls)
    assert outcome.final.state is RunState.succeeded
    assert outcome.last.stats.map_full_drops > 0
    assert outcome.table("syscalls").total_rows <= 16


def test_output_rows_are_truncated_to_the_limit() -> None:
    request = TraceRequest(
        run_id="rows", program="syscalls", duration_s=1, limits=Limits(max_rows=3)
    )
    outcome = run_trace(request, lambda: [os.stat("/") for _ in range(10)] and None)
    table = outcome.table("syscalls")
    assert len(table.rows) == 3 and table.truncated and table.total_rows > 3
    assert outcome.last.stats.rows_truncated
