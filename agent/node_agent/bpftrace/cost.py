"""What a bpftrace trace costs: its BPF programs (the kernel's run-time stats of the programs
bpftrace holds, from /proc/<pid>/fdinfo) plus the CPU of bpftrace and of this child; its
memory is the larger peak of the two processes. The overhead guard judges the same numbers
as for bcc programs, so a budget means the same thing for both engines."""

from __future__ import annotations

import resource
import time

from node_agent.overhead import OverheadMeter, Reading, enable_bpf_stats, program_stats
from node_agent.protocol import Result, SnapshotStats
from node_agent.selfstats import PROC, process_cost


def _peak_kib(pid: int) -> int:
    """bpftrace's peak RSS (VmHWM) in KiB; 0 once it is gone."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class BpftraceCost:
    """Counters of one bpftrace process; they only grow, whatever /proc says at its end."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.bpf_ns = 0
        self.runs = 0
        self.cpu_s = 0.0  # bpftrace's
        self.peak_kib = 0
        self.meter: OverheadMeter | None = None

    def _refresh(self) -> None:
        try:
            bpf_ns, runs = program_stats(PROC / str(self.pid) / "fdinfo")
        except OSError:
            bpf_ns, runs = 0, 0  # gone (or a zombie without fds): the counters stand
        self.bpf_ns, self.runs = max(self.bpf_ns, bpf_ns), max(self.runs, runs)
        cost = process_cost(self.pid)
        if cost is not None:
            self.cpu_s = max(self.cpu_s, cost.cpu_s)
        self.peak_kib = max(self.peak_kib, _peak_kib(self.pid))

    def reaped(self) -> None:
        """After wait(): the kernel's account of the reaped bpftrace (our only child)."""
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu_s = max(self.cpu_s, children.ru_utime + children.ru_stime)
        self.peak_kib = max(self.peak_kib, children.ru_maxrss)

    def read(self) -> Reading:
        self._refresh()
        return Reading(time.monotonic(), self.bpf_ns, self.runs, time.process_time() + self.cpu_s)

    def start_meter(self) -> None:
        """Kernel BPF stats on (for this meter's life) and the first reading: at attach."""
        fd, why = enable_bpf_stats()
        self.meter = OverheadMeter(self.read, stats_fd=fd, unavailable=why)

    def over_budget(self, budget_pct: float) -> str | None:
        if self.meter is None:
            return None
        self.meter.sample()
        return self.meter.over_budget(budget_pct)

    def close(self) -> None:
        if self.meter is not None:
            self.meter.close()

    def stats(self, results: list[Result], *, attach_s: float, events_lost: int) -> SnapshotStats:
        self._refresh()
        own = resource.getrusage(resource.RUSAGE_SELF)
        cost = self.meter.total() if self.meter is not None else None
        return SnapshotStats(
            events_lost=events_lost,
            rows_truncated=any(getattr(r, "truncated", False) for r in results),
            attach_s=round(attach_s, 4),
            agent_cpu_s=round(own.ru_utime + own.ru_stime + self.cpu_s, 4),
            peak_rss_mb=round(max(own.ru_maxrss, self.peak_kib) / 1024, 1),
            bpf_run_time_s=round(cost.bpf_s, 6) if cost else 0.0,
            bpf_runs=cost.bpf_runs if cost else 0,
            events_per_s=round(cost.events_per_s, 1) if cost else 0.0,
            overhead_pct=round(cost.percent, 3) if cost else None,
        )
