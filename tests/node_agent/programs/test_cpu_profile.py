"""cpu_profile against a helper that spends its time in one known function."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node_agent.protocol import FoldedStacks, Limits, Scope, TraceRequest
from tests.helpers import compile_c, run_trace

pytestmark = pytest.mark.bcc

BUSY = "fleettrace_busy_spin"
# Waits for a line on stdin, then spins in BUSY for about 3 s of wall time and exits.
HELPER_C = f"""
#include <stdio.h>
#include <time.h>

static double now(void) {{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}}

__attribute__((noinline)) unsigned long {BUSY}(unsigned long n) {{
    volatile unsigned long x = 0;
    for (unsigned long i = 0; i < n; i++)
        x += i * 7;
    return x;
}}

int main(void) {{
    char line[16];
    if (!fgets(line, sizeof line, stdin))
        return 1;
    double end = now() + 3.0;
    unsigned long total = 0;
    while (now() < end)
        total += {BUSY}(2000000);
    return (int)(total & 1);
}}
"""


@pytest.fixture(scope="module")
def helper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c(HELPER_C, tmp_path_factory.mktemp("cpu") / "ft_busy_bin")


@pytest.fixture
def spawn(helper: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(comm: str = "ft_busy") -> subprocess.Popen[str]:
        # The process name is the basename of what is executed: a link renames it.
        exe = helper.with_name(comm)
        if not exe.exists():
            exe.symlink_to(helper)
        proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, text=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _go(*procs: subprocess.Popen[str]) -> Callable[[], None]:
    def workload() -> None:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()

    return workload


def _share_with(stacks: FoldedStacks, name: str) -> float:
    total = sum(s.count for s in stacks.stacks)
    hits = sum(s.count for s in stacks.stacks if any(f.startswith(name) for f in s.frames))
    return hits / total if total else 0.0


def test_busy_function_dominates_the_process_profile(
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    proc = spawn()
    request = TraceRequest(
        run_id="cpu-pid",
        program="cpu_profile",
        duration_s=2,
        params={"frequency": 199},
        scope=Scope(pid=proc.pid),
    )
    outcome = run_trace(request, _go(proc))
    assert outcome.final.state.value == "succeeded", outcome.final
    stacks = outcome.stacks()
    total = sum(s.count for s in stacks.stacks)
    # ~2 s at 199 Hz on one busy CPU: well over 100 samples unless sampling is broken.
    assert total >= 100, stacks.folded()
    assert _share_with(stacks, BUSY) >= 0.8, stacks.folded()
    assert {s.frames[0] for s in stacks.stacks} == {"ft_busy"}
    # Root first: comm, then main, then the busy function (user frames outermost first).
    top = stacks.stacks[0].frames
    assert top.index(next(f for f in top if f.startswith("main"))) < top.index(
        next(f for f in top if f.startswith(BUSY))
    ), top
    assert stacks.total_rows == len(stacks.stacks)
    assert not stacks.truncated


def test_user_only_has_no_kernel_frames_and_max_rows_truncates(
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    proc = spawn()
    request = TraceRequest(
        run_id="cpu-user",
        program="cpu_profile",
        duration_s=2,
        params={"frequency": 199, "kernel": False},
        scope=Scope(pid=proc.pid),
        limits=Limits(max_rows=1),
    )
    outcome = run_trace(request, _go(proc))
    stacks = outcome.stacks()
    assert len(stacks.stacks) == 1
    assert any(f.startswith(BUSY) for f in stacks.stacks[0].frames), stacks.folded()
    assert not any(f.endswith("_[k]") for s in stacks.stacks for f in s.frames)
    assert stacks.truncated == (stacks.total_rows > 1)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_cgroup_scope_excludes_a_busy_process_outside_it(
    spawn: Callable[..., subprocess.Popen[str]], make_cgroup: Callable[[str], Path]
) -> None:
    group = make_cgroup("cpu")
    inside, outside = spawn("ft_busy_in"), spawn("ft_busy_out")
    (group / "cgroup.procs").write_text(str(inside.pid))
    outside_cpu: list[float] = []
    inside_cpu: list[float] = []

    def workload() -> None:
        _go(inside, outside)()
        time.sleep(1.5)
        outside_cpu.append(_cpu_seconds(outside.pid))
        inside_cpu.append(_cpu_seconds(inside.pid))

    request = TraceRequest(
        run_id="cpu-cg",
        program="cpu_profile",
        duration_s=2,
        params={"frequency": 199},
        scope=Scope(cgroup=group.name),
    )
    outcome = run_trace(request, workload)
    assert outcome.final.state.value == "succeeded", outcome.final
    stacks = outcome.stacks()
    # At 199 Hz, ~200 samples per CPU-second the inside helper ran: on a busy machine it
    # gets less than a CPU, so the floor follows the CPU it was measured to have had.
    floor = max(30, int(0.6 * 199 * inside_cpu[0])) if inside_cpu else 100
    assert sum(s.count for s in stacks.stacks) >= floor, (inside_cpu, stacks.folded())
    assert _share_with(stacks, BUSY) >= 0.8, stacks.folded()
    # The outside helper really was busy while traced (0.1 CPU-s is ~20 samples at 199 Hz,
    # however loaded the machine), yet none of its samples were kept.
    assert outside_cpu and outside_cpu[0] >= 0.1, outside_cpu
    assert {s.frames[0] for s in stacks.stacks} == {"ft_busy_in"}
