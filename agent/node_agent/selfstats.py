"""The agent's own cost and record, for its heartbeat: read from /proc, counted as traces end.

The cost is summed over the worker process and every descendant, whatever started them (a
warm spare, a zygote, trace children, a probe): they are found through /proc, not through
the code that made them. CPU includes exited children, through their parents' reaped time.
No psutil: a few small files per process, once a heartbeat.
"""

from __future__ import annotations

import math
import os
import resource
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from node_agent.protocol import AgentStats, RunState, StateChange

PROC = Path("/proc")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
# PSS walks every page of every process (~10 ms of CPU for an idle agent's 160 MiB, against
# ~0.3 ms for the rest): read at most this often, the last reading reported in between.
PSS_EVERY_S = 60.0
# Ended without failing: everything else (failed, timed out, unsupported) is a failure.
NOT_FAILED = (RunState.succeeded, RunState.cancelled)


@dataclass(frozen=True)
class ProcessCost:
    pid: int
    ppid: int
    rss_bytes: int
    cpu_s: float  # user + system, its own and its reaped children's


def process_cost(pid: int) -> ProcessCost | None:
    """One process's cost from /proc/<pid>/stat; None once it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The name (field 2) may hold spaces and parentheses: the fields start after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return ProcessCost(
        pid=pid,
        ppid=int(fields[1]),
        rss_bytes=int(fields[21]) * PAGE_BYTES,
        cpu_s=(utime + stime + cutime + cstime) / TICKS_PER_S,
    )


def pss_bytes(pid: int) -> int | None:
    """Proportional set size (shared pages divided among their users); None if unreadable."""
    try:
        with (PROC / str(pid) / "smaps_rollup").open() as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _children_files_work() -> bool:
    return (PROC / str(os.getpid()) / "task" / str(os.getpid()) / "children").exists()


CHILDREN_FILES = _children_files_work()  # CONFIG_PROC_CHILDREN: most kernels have it


def children(pid: int) -> list[int]:
    """pid's children, from each of its threads' children file (each thread forks its own)."""
    found: list[int] = []
    try:
        tasks = os.listdir(PROC / str(pid) / "task")
    except OSError:
        return found
    for tid in tasks:
        try:
            found += [
                int(p) for p in (PROC / str(pid) / "task" / tid / "children").read_text().split()
            ]
        except OSError:
            continue  # the thread ended meanwhile
    return found


def _all_children() -> dict[int, list[int]]:
    """Every process's children, by a scan of /proc (kernels without the children files)."""
    kids: dict[int, list[int]] = defaultdict(list)
    for entry in os.scandir(PROC):
        if entry.name.isdigit():
            cost = process_cost(int(entry.name))
            if cost is not None:
                kids[cost.ppid].append(cost.pid)
    return kids


def family(root: int) -> list[int]:
    """root and all its descendants, root first."""
    scanned = None if CHILDREN_FILES else _all_children()
    found, todo, seen = [], [root], {root}
    while todo:
        pid = todo.pop()
        found.append(pid)
        for child in children(pid) if scanned is None else scanned.get(pid, []):
            if child not in seen:  # a reused pid cannot make a loop
                seen.add(child)
                todo.append(child)
    return found


def family_costs(root: int) -> Iterator[ProcessCost]:
    for pid in family(root):
        cost = process_cost(pid)
        if cost is not None:
            yield cost


def own_cpu_s() -> float:
    """This process's CPU and its reaped descendants' (rusage: finer than /proc's ticks)."""
    me, reaped = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + reaped.ru_utime + reaped.ru_stime


class SelfStats:
    """The heartbeat's AgentStats for the agent rooted at `root` (by default this process);
    traces are counted by `trace_ended`, from any thread."""

    def __init__(self, root: int | None = None, *, pss_every_s: float = PSS_EVERY_S) -> None:
        self.root = os.getpid() if root is None else root
        self.pss_every_s = pss_every_s
        self._pss: int | None = None
        self._pss_at = -math.inf
        self.started_at = datetime.now(timezone.utc)
        self._lock = threading.Lock()
        self._run = 0
        self._failed = 0
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None
        self._cpu_s = 0.0

    def trace_ended(self, final: StateChange) -> None:
        with self._lock:
            self._run += 1
            if final.state not in NOT_FAILED:
                self._failed += 1
                self._last_error = f"run {final.run_id}: {failure_text(final)}"
                self._last_error_at = datetime.now(timezone.utc)

    def collect(self, *, programs_loaded: int) -> AgentStats:
        costs = list(family_costs(self.root))
        rss = sum(c.rss_bytes for c in costs)
        pss = self._pss_of(costs)
        cpu = sum(own_cpu_s() if c.pid == os.getpid() else c.cpu_s for c in costs)
        with self._lock:
            # A child that exits between two reads may be missed once: a counter never goes back.
            self._cpu_s = max(self._cpu_s, cpu)
            return AgentStats(
                rss_bytes=rss,
                pss_bytes=pss,
                cpu_seconds_total=round(self._cpu_s, 3),
                programs_loaded=programs_loaded,
                traces_run_total=self._run,
                traces_failed_total=self._failed,
                last_error=self._last_error,
                last_error_at=self._last_error_at,
                started_at=self.started_at,
            )

    def _pss_of(self, costs: list[ProcessCost]) -> int | None:
        if time.monotonic() - self._pss_at >= self.pss_every_s:
            found = [pss_bytes(c.pid) for c in costs]
            self._pss = None if None in found else sum(p for p in found if p is not None)
            self._pss_at = time.monotonic()
        return self._pss


def failure_text(final: StateChange) -> str:
    """What went wrong, as the run's final state says it."""
    if final.error is not None:
        return f"{final.error.code.value}: {final.error.message}"
    return f"{final.state.value}: {final.reason or 'no reason given'}"
