"""What a trace costs the host it runs on: the kernel's own BPF run-time stats plus our CPU.

The kernel counts run time per program only while stats are enabled; BPF_ENABLE_STATS turns
them on for as long as the returned fd stays open (Linux 5.8+), so a trace that ends, or a
child that dies, turns them off with it. The programs of a trace are exactly the BPF program
fds of its child process, which /proc/self/fdinfo lists with `run_time_ns` and `run_cnt`.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351}
WINDOW_S = 3.0  # the budget is judged over this much of the recent past, not one spike


def enable_bpf_stats() -> tuple[int | None, str | None]:
    """(fd holding stats on, None) or (None, why there are no stats)."""
    number = SYS_BPF.get(platform.machine())
    if number is None:
        return None, f"no bpf syscall number known for {platform.machine()}"
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint8 * 128)()  # union bpf_attr; enable_stats.type is its first u32
    ctypes.c_uint32.from_buffer(attr).value = BPF_STATS_RUN_TIME
    fd = libc.syscall(number, BPF_ENABLE_STATS, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd >= 0:
        return int(fd), None
    err = ctypes.get_errno()
    if Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip() == "1":
        return None, None  # someone enabled them system-wide: we can read them all the same
    return None, f"the kernel's BPF stats are unavailable ({errno.errorcode.get(err, err)})"


def program_stats(fdinfo: Path = Path("/proc/self/fdinfo")) -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over this process's BPF programs."""
    run_time = run_count = 0
    for entry in fdinfo.iterdir():
        try:
            text = entry.read_text()
        except OSError:
            continue  # an fd closed while we looked
        if "prog_id:" not in text:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key == "run_time_ns":
                run_time += int(value)
            elif key == "run_cnt":
                run_count += int(value)
    return run_time, run_count


@dataclass(frozen=True)
class Cost:
    """What a trace cost over some span of wall time."""

    wall_s: float
    bpf_s: float
    bpf_runs: int
    cpu_s: float  # our own process: polling, map reads, decoding

    @property
    def percent(self) -> float:
        """Percent of one CPU: kernel BPF time plus our own CPU, over wall time."""
        return 100.0 * (self.bpf_s + self.cpu_s) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def events_per_s(self) -> float:
        return self.bpf_runs / self.wall_s if self.wall_s > 0 else 0.0


@dataclass(frozen=True)
class Reading:
    """Cumulative counters at one moment (monotonic seconds)."""

    at: float
    bpf_ns: int
    runs: int
    cpu_s: float


def read_process() -> Reading:
    """This process's BPF programs and CPU time, now."""
    bpf_ns, runs = program_stats()
    return Reading(time.monotonic(), bpf_ns, runs, time.process_time())


class OverheadMeter:
    """Readings since attach; the cost so far and over the recent window."""

    def __init__(
        self,
        read: Callable[[], Reading] = read_process,
        *,
        stats_fd: int | None = None,
        unavailable: str | None = None,
    ) -> None:
        self._read = read
        self.stats_fd = stats_fd
        self.unavailable = unavailable
        self.first = read()
        self.readings: list[Reading] = [self.first]

    @classmethod
    def start(cls) -> OverheadMeter:
        """Turn the kernel's BPF stats on (for as long as this meter lives) and start reading."""
        fd, why = enable_bpf_stats()
        if why:
            log.warning("overhead guard: %s; only our own CPU is counted", why)
        return cls(stats_fd=fd, unavailable=why)

    def sample(self) -> None:
        self.readings.append(self._read())
        # Keep only what the window needs, plus one reading older than it.
        horizon = self.readings[-1].at - WINDOW_S
        while len(self.readings) > 2 and self.readings[1].at <= horizon:
            self.readings.pop(0)

    def total(self) -> Cost:
        return _between(self.first, self._read())

    def recent(self) -> Cost | None:
        """The cost over the last WINDOW_S, once that much has been seen."""
        if self.readings[-1].at - self.first.at < WINDOW_S:
            return None
        return _between(self.readings[0], self.readings[-1])

    def over_budget(self, budget_pct: float) -> str | None:
        """Why the trace must stop, or None."""
        cost = self.recent()
        if cost is None or cost.percent <= budget_pct:
            return None
        return (
            f"overhead {cost.percent:.1f} % of a CPU > budget {budget_pct:g} %"
            f" ({cost.events_per_s:,.0f} events/s over the last {cost.wall_s:.1f} s)"
        )

    def close(self) -> None:
        if self.stats_fd is not None:
            os.close(self.stats_fd)
            self.stats_fd = None


def _between(a: Reading, b: Reading) -> Cost:
    return Cost(
        wall_s=b.at - a.at,
        bpf_s=(b.bpf_ns - a.bpf_ns) / 1e9,
        bpf_runs=b.runs - a.runs,
        cpu_s=b.cpu_s - a.cpu_s,
    )
