"""Continuous schedules against a new trace per slot: what one slot costs each way.

For each program, the same number of slots of the same length is taken twice through the
real TraceRunner (child processes, with the agent's warm spare child):

- `recompile`: a trace of `--slot` seconds per slot, as a plain schedule fires them: each
  one compiles, attaches, snapshots once and tears down.
- `continuous`: one trace of `slots x slot` seconds with a snapshot every `--slot`, as a
  continuous schedule runs it: compiled once, one snapshot (decode) per slot.

Per slot we report the CPU of the bench process and its trace children together (getrusage
SELF + CHILDREN over the whole mode, divided by the slots; children are counted when
reaped, so the pool is closed first), the time from the request to `running` (setup), and
the blind time: the part of the slot's wall time not covered by any snapshot interval.

    sudo .venv/bin/python bench/continuous.py [--slots 5] [--slot 1s] [--only syscalls,...]
"""

from __future__ import annotations

import itertools
import json
import resource
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import _main

from node_agent.arguments import parse_duration
from node_agent.protocol import RunEvent, RunState, Snapshot, StateChange, TraceRequest
from node_agent.runner import ChildPool, TraceRunner

PROGRAMS = ("syscalls", "runqlat", "opens")


@dataclass
class ModeResult:
    mode: str
    slots: int
    ok: bool = True
    error: str | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0
    setup_s: list[float] = field(default_factory=list)
    covered_s: float = 0.0  # seconds inside some snapshot interval
    # The trace child's CPU: its whole life per slot (recompile), or between snapshots.
    snapshot_cpu_s: list[float] = field(default_factory=list)

    def per_slot(self) -> dict[str, Any]:
        n = max(1, self.slots)
        return {
            "mode": self.mode,
            "ok": self.ok,
            "error": self.error,
            "cpu_ms_per_slot": round(1000 * self.cpu_s / n, 1),
            "setup_s_median": round(statistics.median(self.setup_s), 3) if self.setup_s else None,
            "blind_s_per_slot": round(max(0.0, self.wall_s - self.covered_s) / n, 3),
            "snapshot_cpu_ms_median": (
                round(1000 * statistics.median(self.snapshot_cpu_s), 1)
                if self.snapshot_cpu_s
                else None
            ),
        }


def _cpu() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _trace(
    request: TraceRequest, pool: ChildPool
) -> tuple[StateChange, list[Snapshot], float | None]:
    """Run one trace; its final state, snapshots and seconds from start to running."""
    snapshots: list[Snapshot] = []
    running: list[float] = []

    def on_event(event: RunEvent) -> None:
        if isinstance(event, Snapshot):
            snapshots.append(event)
        elif event.state is RunState.running:
            running.append(time.monotonic())

    started = time.monotonic()
    final = TraceRunner(request, on_event, pool=pool).run()
    return final, snapshots, (running[0] - started if running else None)


def _fail(result: ModeResult, final: StateChange) -> ModeResult:
    result.ok = False
    result.error = final.error.message if final.error else f"ended {final.state.value}"
    return result


def recompile(program: str, slots: int, slot_s: float) -> ModeResult:
    result = ModeResult("recompile", slots)
    pool = ChildPool()
    pool.refill()  # as on an agent that has been up: the first slot also gets a warm child
    cpu0, wall0 = _cpu(), time.monotonic()
    try:
        for _ in range(slots):
            request = TraceRequest(run_id=str(uuid.uuid4()), program=program, duration_s=slot_s)
            final, snapshots, setup = _trace(request, pool)
            if final.state is not RunState.succeeded or not snapshots:
                return _fail(result, final)
            if setup is not None:
                result.setup_s.append(setup)
            result.covered_s += snapshots[-1].interval_end - snapshots[0].interval_start
            result.snapshot_cpu_s.append(snapshots[-1].stats.agent_cpu_s)
    finally:
        pool.close()
    result.wall_s = time.monotonic() - wall0
    result.cpu_s = _cpu() - cpu0
    return result


def continuous(program: str, slots: int, slot_s: float) -> ModeResult:
    result = ModeResult("continuous", slots)
    pool = ChildPool()
    pool.refill()
    cpu0, wall0 = _cpu(), time.monotonic()
    try:
        request = TraceRequest(
            run_id=str(uuid.uuid4()),
            program=program,
            duration_s=slots * slot_s,
            interval_s=slot_s,
        )
        final, snapshots, setup = _trace(request, pool)
        if final.state is not RunState.succeeded or not snapshots:
            return _fail(result, final)
        if setup is not None:
            result.setup_s.append(setup)
        result.covered_s = snapshots[-1].interval_end - snapshots[0].interval_start
        cpu = [s.stats.agent_cpu_s for s in snapshots]
        result.snapshot_cpu_s = [b - a for a, b in itertools.pairwise(cpu)]
    finally:
        pool.close()
    result.wall_s = time.monotonic() - wall0
    result.cpu_s = _cpu() - cpu0
    return result


def main(argv: list[str] | None = None) -> int:
    parser = _main.options(__doc__)
    parser.add_argument("--slots", type=int, default=5)
    parser.add_argument("--slot", type=parse_duration, default=1.0, help="seconds per slot")
    parser.add_argument("--only", help="comma-separated programs", default=",".join(PROGRAMS))
    args = parser.parse_args(argv)
    log = sys.stderr if args.json else sys.stdout
    rows: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    for program in [p.strip() for p in args.only.split(",") if p.strip()]:
        for measure in (recompile, continuous):
            log.write(f"{program}: {measure.__name__} x{args.slots} of {args.slot:g}s ...\n")
            log.flush()
            result = measure(program, args.slots, args.slot)
            rows.append({"program": program, **result.per_slot()})
            raw.append({"program": program, **asdict(result)})
    if args.json:
        sys.stdout.write(json.dumps({"summary": rows, "runs": raw}, indent=2) + "\n")
        return 0
    header = ["program", "mode", "cpu ms/slot", "setup s", "blind s/slot", "child cpu ms/slot"]
    keys = ["program", "mode", "cpu_ms_per_slot", "setup_s_median", "blind_s_per_slot"]
    table = [
        [str(r[k]) if r[k] is not None else "-" for k in keys]
        + [str(r["snapshot_cpu_ms_median"]) if r["ok"] else f"failed: {r['error']}"]
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
    for line in [header, *table]:
        log.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
