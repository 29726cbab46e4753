"""syscall_latency against processes that make a known number of known-length syscalls."""

from __future__ import annotations

import subprocess

import pytest

from node_agent.errors import BadParameter
from node_agent.programs.syscall_latency import SPEC
from node_agent.protocol import Log2Histogram, Scope, TraceRequest
from tests.helpers import go, run_trace, spawn_waiting

pytestmark = pytest.mark.bcc

SLEEPS = 100  # of 1 ms each: Python's time.sleep is clock_nanosleep on Linux
GETPPIDS = 2000
WORKLOAD = (
    "import os, sys, time\n"
    "sys.stdin.readline()\n"
    f"for _ in range({SLEEPS}): time.sleep(0.001)\n"
    f"for _ in range({GETPPIDS}): os.getppid()\n"
)


@pytest.fixture
def procs(procs: list[subprocess.Popen[str]]) -> list[subprocess.Popen[str]]:
    """Two workload processes waiting for "go" (killed and reaped by the shared fixture)."""
    procs += [spawn_waiting(WORKLOAD) for _ in range(2)]
    return procs


def _share(hist: Log2Histogram, low: int, high: int) -> float:
    """Fraction of the samples in slots low..high."""
    return sum(c for s, c in hist.buckets if low <= s <= high) / hist.total


def test_known_sleeps_and_getppids_of_the_scoped_process(
    procs: list[subprocess.Popen[str]],
) -> None:
    request = TraceRequest(
        run_id="sclat-n", program="syscall_latency", duration_s=3, scope=Scope(pid=procs[0].pid)
    )
    outcome = run_trace(request, lambda: go(procs))
    assert outcome.final.state.value == "succeeded", outcome.final
    by_name = {str(h.labels["syscall"]): h for h in outcome.histograms()}
    sleeps = by_name["clock_nanosleep"]
    assert sleeps.name == "syscall_latency" and sleeps.unit == "usec"
    # Exactly the scoped process's calls: the other process makes as many again.
    assert sleeps.total == SLEEPS
    assert by_name["getppid"].total == GETPPIDS
    # 1 ms sleeps land in slot 11 ([1024, 2047] us) or just around it; none is much shorter
    # (slot 10 starts at 512 us) unless its deadline passed before it blocked.
    assert _share(sleeps, 10, 12) >= 0.9
    assert _share(by_name["getppid"], 1, 4) >= 0.9  # under 16 us


def test_syscall_filter_in_nsec_keeps_only_that_syscall(
    procs: list[subprocess.Popen[str]],
) -> None:
    request = TraceRequest(
        run_id="sclat-filter",
        program="syscall_latency",
        duration_s=3,
        params={"syscall": "clock_nanosleep", "unit": "nsec"},
        scope=Scope(pid=procs[0].pid),
    )
    hists = run_trace(request, lambda: go(procs)).histograms()
    assert [h.labels for h in hists] == [{"syscall": "clock_nanosleep"}]
    assert hists[0].unit == "nsec"
    assert hists[0].total == SLEEPS
    assert _share(hists[0], 20, 22) >= 0.9  # slot 20 starts at 2**19 ns (524 us)


def test_unknown_or_never_returning_syscall_is_a_bad_parameter() -> None:
    for name in ("no_such_syscall", "exit_group"):
        params = SPEC.validate_params({"syscall": name})
        with pytest.raises(BadParameter) as err:
            SPEC.defines(params)
        assert err.value.field == "params.syscall"
    request = TraceRequest(
        run_id="sclat-bad",
        program="syscall_latency",
        duration_s=1,
        params={"syscall": "no_such_syscall"},
    )
    final = run_trace(request).final
    assert final.state.value == "failed"
    assert final.error is not None and final.error.code.value == "bad_parameter"
    assert final.error.message.startswith("params.syscall")
