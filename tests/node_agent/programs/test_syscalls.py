"""syscalls against workloads whose answer is known."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial

import pytest

from node_agent.protocol import Scope, TraceRequest
from tests.helpers import go, row_value, run_trace, spawn_waiting

pytestmark = pytest.mark.bcc

N = 5000
GETPPID_LOOP = f"import os\nfor _ in range({N}): os.getppid()\n"


def test_counts_exactly_n_getppid_calls_of_one_process() -> None:
    child = spawn_waiting(f"import sys; sys.stdin.readline()\n{GETPPID_LOOP}")
    workload = partial(go, [child])

    request = TraceRequest(
        run_id="syscalls-n", program="syscalls", duration_s=3, scope=Scope(pid=child.pid)
    )
    outcome = run_trace(request, workload)
    assert outcome.final.state.value == "succeeded", outcome.final
    table = outcome.table("syscalls")
    assert row_value(table, syscall="getppid", pid=child.pid) == N
    # Nothing outside the scoped pid is counted.
    assert {keys[1] for keys, _ in table.rows} == {child.pid}


def test_cgroup_scope_excludes_work_outside_it(make_cgroup) -> None:  # type: ignore[no-untyped-def]
    group = make_cgroup("syscalls")
    script = f"import sys; sys.stdin.readline()\n{GETPPID_LOOP}"
    inside = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, text=True)
    outside = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, text=True)
    (group / "cgroup.procs").write_text(str(inside.pid))

    def workload() -> None:
        for proc in (inside, outside):
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        inside.wait(timeout=30)
        outside.wait(timeout=30)

    request = TraceRequest(
        run_id="syscalls-cg", program="syscalls", duration_s=3, scope=Scope(cgroup=group.name)
    )
    outcome = run_trace(request, workload)
    table = outcome.table("syscalls")
    assert row_value(table, syscall="getppid", pid=inside.pid) == N
    assert row_value(table, pid=outside.pid) == 0
    assert row_value(table, pid=os.getpid()) == 0


def test_per_process_off_counts_by_syscall_only() -> None:
    child = spawn_waiting(f"import sys; sys.stdin.readline()\n{GETPPID_LOOP}")
    workload = partial(go, [child])

    request = TraceRequest(
        run_id="syscalls-flat",
        program="syscalls",
        duration_s=2,
        params={"per_process": False},
        scope=Scope(pid=child.pid),
    )
    table = run_trace(request, workload).table("syscalls")
    assert [f.name for f in table.key_fields] == ["syscall"]
    assert row_value(table, syscall="getppid") == N
