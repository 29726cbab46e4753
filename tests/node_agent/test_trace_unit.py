"""The trace loop against the fake runtime: clocks, states, stats, errors."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from node_agent.errors import ProgramCompileError
from node_agent.protocol import (
    CounterTable,
    ErrorCode,
    RunEvent,
    RunState,
    Snapshot,
    StateChange,
    TraceRequest,
)
from node_agent.runtime.fake import FakeProgram, FakeRuntime
from node_agent.trace import execute, prepare


def _key(nr: int, tgid: int = 7, comm: bytes = b"app") -> SimpleNamespace:
    return SimpleNamespace(nr=nr, tgid=tgid, comm=comm)


def _program() -> FakeProgram:
    return FakeProgram(
        {
            "counts": [(_key(39), 5), (_key(110), 12), (_key(110, tgid=8, comm=b"other"), 3)],
            "ft_drops": [(0, 4)],
            "ft_lost": [(0, 0)],
        }
    )


def test_snapshots_every_interval_then_final_then_state() -> None:
    request = TraceRequest(run_id="u1", program="syscalls", duration_s=0.55, interval_s=0.2)
    events: list[RunEvent] = []
    program = _program()
    state = execute(prepare(request), FakeRuntime(program), events.append, threading.Event())
    assert state is RunState.succeeded
    assert isinstance(events[0], StateChange) and events[0].state is RunState.running
    snapshots = [e for e in events if isinstance(e, Snapshot)]
    assert [s.seq for s in snapshots] == [0, 1, 2]
    assert [s.final for s in snapshots] == [False, False, True]
    assert isinstance(events[-1], StateChange) and events[-1].state is RunState.succeeded
    table = snapshots[-1].results[0]
    assert isinstance(table, CounterTable)
    assert table.rows[0] == (["getppid", 7, "app"], [12])
    assert snapshots[-1].stats.map_full_drops == 4
    assert program.closed


def test_stop_flag_cancels_with_a_final_snapshot() -> None:
    request = TraceRequest(run_id="u2", program="syscalls", duration_s=30)
    stop = threading.Event()
    stop.set()
    events: list[RunEvent] = []
    state = execute(prepare(request), FakeRuntime(_program()), events.append, stop)
    assert state is RunState.cancelled
    assert [type(e).__name__ for e in events] == ["StateChange", "Snapshot", "StateChange"]


def test_compile_errors_become_a_failed_state_with_the_log() -> None:
    error = ProgramCompileError("the C source did not compile", detail="main.c:3: error: x")
    events: list[RunEvent] = []
    request = TraceRequest(run_id="u3", program="syscalls", duration_s=1)
    state = execute(prepare(request), FakeRuntime(error=error), events.append, threading.Event())
    assert state is RunState.failed
    (change,) = events
    assert isinstance(change, StateChange) and change.error is not None
    assert change.error.code is ErrorCode.compile_error
    assert change.error.detail == "main.c:3: error: x"
