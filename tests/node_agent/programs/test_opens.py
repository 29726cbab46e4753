"""opens against workloads whose answer is known: a unique file opened K times."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from node_agent.protocol import CounterTable, Scope, TraceRequest
from tests.helpers import go, run_trace, spawn_waiting

pytestmark = pytest.mark.bcc

K = 40  # opens of an existing file with openat
K2 = 6  # opens of the same file with openat2
J = 25  # opens of a missing file

# Waits for a line on stdin; opens argv[1] K times (openat) and K2 times (openat2), then the
# missing argv[2] J times.
OPENER = f"""
import ctypes, os, sys
sys.stdin.readline()
path, missing = sys.argv[1], sys.argv[2]
for _ in range({K}):
    open(path).close()
class OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
how = OpenHow(os.O_RDONLY, 0, 0)
for _ in range({K2}):
    fd = libc.syscall(437, -100, path.encode(), ctypes.byref(how), ctypes.sizeof(how))
    assert fd >= 0, ctypes.get_errno()
    os.close(fd)
for _ in range({J}):
    try:
        open(missing)
    except FileNotFoundError:
        pass
"""


def _opener(path: Path, missing: Path) -> subprocess.Popen[str]:
    return spawn_waiting(OPENER, str(path), str(missing))


def _values(table: CounterTable, **key: object) -> list[int]:
    """Element-wise sum of all values over rows whose named key fields match."""
    names = [f.name for f in table.key_fields]
    total = [0] * len(table.value_fields)
    for keys, values in table.rows:
        fields = dict(zip(names, keys, strict=True))
        if all(fields.get(k) == v for k, v in key.items()):
            total = [t + v for t, v in zip(total, values, strict=True)]
    return total


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    path = tmp_path / "ft-opens-target"
    path.write_text("x")
    return path, tmp_path / "ft-opens-missing"


def test_counts_k_opens_and_j_errors_of_one_process(files: tuple[Path, Path]) -> None:
    path, missing = files
    child = _opener(path, missing)
    request = TraceRequest(
        run_id="opens-k", program="opens", duration_s=2.5, scope=Scope(pid=child.pid)
    )
    outcome = run_trace(request, lambda: go([child], succeed=True))
    assert outcome.final.state.value == "succeeded", outcome.final
    table = outcome.table("opens")
    assert [f.name for f in table.key_fields] == ["pid", "comm", "path"]
    assert table.value_fields == ["count", "errors"]
    assert _values(table, pid=child.pid, path=str(path)) == [K + K2, 0]
    assert _values(table, pid=child.pid, path=str(missing)) == [J, J]
    # Nothing outside the scoped pid is counted.
    assert {keys[0] for keys, _ in table.rows} == {child.pid}


def test_failed_only_by_path_in_cgroup(make_cgroup, files: tuple[Path, Path]) -> None:  # type: ignore[no-untyped-def]
    path, missing = files
    group = make_cgroup("opens")
    inside = _opener(path, missing)
    outside = _opener(path, missing)
    (group / "cgroup.procs").write_text(str(inside.pid))
    request = TraceRequest(
        run_id="opens-failed",
        program="opens",
        duration_s=2.5,
        params={"per_process": False, "failed_only": True},
        scope=Scope(cgroup=group.name),
    )
    table = run_trace(request, lambda: go([inside, outside], succeed=True)).table("opens")
    assert [f.name for f in table.key_fields] == ["path"]
    # Only the inside process's failures: successful opens and the outside process are not.
    assert _values(table, path=str(missing)) == [J, J]
    assert _values(table, path=str(path)) == [0, 0]
    assert all(values[0] == values[1] for _, values in table.rows)
