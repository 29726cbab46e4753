"""Run a prepared bpftrace trace: the host's bpftrace under the trace's deadline."""

from __future__ import annotations

import threading

from node_agent.errors import UnsupportedProgram
from node_agent.protocol import RunEvent, RunState, StateChange
from node_agent.trace import Emit, PreparedTrace


def run_script(
    prepared: PreparedTrace, emit: Emit, stop: threading.Event, *, cgroup_base: str | None
) -> RunState:
    """Run the script to its deadline or until stop is set; emit snapshots and states."""
    error = UnsupportedProgram("the bpftrace engine is not built yet").to_error()
    event: RunEvent = StateChange(
        run_id=prepared.request.run_id, state=RunState.unsupported, error=error
    )
    emit(event)
    return RunState.unsupported
