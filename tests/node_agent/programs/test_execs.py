"""execs against workloads whose answer is known: a uniquely named binary run M times."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from node_agent.protocol import Limits, Scope, TraceRequest
from tests.helpers import go, row_value, run_trace, spawn_waiting

pytestmark = pytest.mark.bcc

M = 7
MAX_SAMPLES = 3

# Waits for a line on stdin, then runs argv[1] argv[2] times and tries argv[3] argv[4] times.
LAUNCHER = """
import subprocess, sys
sys.stdin.readline()
for _ in range(int(sys.argv[2])):
    subprocess.run([sys.argv[1]], check=True)
for _ in range(int(sys.argv[4])):
    try:
        subprocess.run([sys.argv[3]])
    except FileNotFoundError:
        pass
"""


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    """A copy of true whose name (and so comm) nothing else on the host uses."""
    path = tmp_path / f"ftexec{os.getpid()}"
    shutil.copy(shutil.which("true") or "/bin/true", path)
    return path


def _launcher(
    binary: Path, runs: int, missing: Path | None = None, fails: int = 0
) -> subprocess.Popen[str]:
    return spawn_waiting(LAUNCHER, str(binary), str(runs), str(missing or ""), str(fails))


def _request(name: str, **fields: Any) -> TraceRequest:
    return TraceRequest(run_id=f"execs-{name}", program="execs", duration_s=2.5, **fields)


def test_counts_m_execs_in_cgroup_and_bounds_samples(make_cgroup, binary: Path) -> None:  # type: ignore[no-untyped-def]
    group = make_cgroup("execs")
    inside = _launcher(binary, M)
    outside = _launcher(binary, 4)
    (group / "cgroup.procs").write_text(str(inside.pid))

    request = _request("m", scope=Scope(cgroup=group.name), limits=Limits(max_samples=MAX_SAMPLES))
    outcome = run_trace(request, lambda: go([inside, outside], succeed=True))
    assert outcome.final.state.value == "succeeded", outcome.final
    table = outcome.table("execs")
    # The outside launcher's 4 runs of the same binary are not counted.
    assert row_value(table, comm=binary.name, filename=str(binary)) == M
    assert sum(values[0] for _, values in table.rows) == M

    samples = outcome.samples()
    assert samples.fields == ["time", "pid", "uid", "comm", "filename"]
    assert samples.seen == M
    assert len(samples.events) == MAX_SAMPLES
    assert samples.dropped == M - MAX_SAMPLES
    for when, pid, uid, comm, filename in samples.events:
        assert comm == binary.name and filename == str(binary)
        assert uid == os.getuid()
        assert pid not in (inside.pid, outside.pid)
        assert isinstance(when, float) and abs(when - outcome.last.interval_end) < 30


def test_comm_scope_matches_the_new_program_and_samples_off(binary: Path) -> None:
    launcher = _launcher(binary, M)
    request = _request("comm", params={"samples": False}, scope=Scope(comm=binary.name))
    outcome = run_trace(request, lambda: go([launcher], succeed=True))
    table = outcome.table("execs")
    assert [keys for keys, _ in table.rows] == [[binary.name, str(binary)]]
    assert row_value(table) == M
    assert outcome.samples().seen == 0


def test_failed_execs_are_counted_by_error(make_cgroup, binary: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    group = make_cgroup("execfail")
    missing = tmp_path / "no-such-program"
    fails = 5
    launcher = _launcher(binary, 2, missing, fails)
    (group / "cgroup.procs").write_text(str(launcher.pid))
    request = _request("fail", params={"failures": True}, scope=Scope(cgroup=group.name))
    outcome = run_trace(request, lambda: go([launcher], succeed=True))
    failures = outcome.table("exec_failures")
    assert row_value(failures, filename=str(missing), error="ENOENT") == fails
    assert row_value(failures) == fails
    assert row_value(outcome.table("execs"), filename=str(binary)) == 2
