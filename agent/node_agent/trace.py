"""One trace, start to end: validate, preflight, load, snapshot on a clock, stop, unload.

`prepare` needs no bcc and no root; `execute` runs inside the runner's child process.
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node_agent.attach import TRACEFS, choose
from node_agent.errors import FleettraceError, LimitExceeded, UnsupportedProgram
from node_agent.overhead import OverheadMeter
from node_agent.programs import get_program
from node_agent.programs.spec import DecodeContext, ProgramSpec, SampleSpec
from node_agent.protocol import (
    ErrorCode,
    EventSamples,
    Feature,
    KeyValue,
    Result,
    RunEvent,
    RunState,
    Snapshot,
    SnapshotStats,
    StateChange,
    TraceError,
    TraceRequest,
)
from node_agent.runtime.base import LoadedProgram, Runtime
from node_agent.scope import scope_defines

log = logging.getLogger(__name__)

PRELUDE = Path(__file__).with_name("programs") / "prelude.h"
POLL_MS = 100  # how often the loop looks at the stop flag: the bound on cancel latency
COST_EVERY_S = 1.0  # how often the overhead guard reads the trace's cost

Emit = Callable[[RunEvent], None]


@dataclass(frozen=True)
class PreparedTrace:
    request: TraceRequest
    spec: ProgramSpec
    params: dict[str, Any]
    source: str
    cflags: list[str]


def prepare(
    request: TraceRequest,
    *,
    allow_custom: bool = False,
    allow_bpftrace: bool = False,
    max_duration_s: float = 3600.0,
    max_overhead_pct: float = 400.0,
    cgroup_base: str | None = None,
) -> PreparedTrace:
    """Check a request against the catalog and this agent's limits; build source and flags.

    `cgroup_base` is the agent's own cgroup: every trace is confined to it.
    """
    spec = get_program(request.program)
    if spec.source_policy is not None and not allow_custom:
        raise UnsupportedProgram("this agent does not run custom programs (allow_custom is off)")
    if spec.engine == "bpftrace" and not allow_bpftrace:
        raise UnsupportedProgram("this agent does not run bpftrace scripts (allow_bpftrace is off)")
    if request.duration_s > max_duration_s:
        raise LimitExceeded(
            f"duration_s: {request.duration_s:g}s is above this agent's limit"
            f" of {max_duration_s:g}s"
        )
    budget = request.limits.overhead_pct
    if budget is None and max_overhead_pct < 400:
        raise LimitExceeded(
            f"limits.overhead_pct: this agent requires an overhead budget"
            f" (at most {max_overhead_pct:g} % of a CPU)"
        )
    if budget is not None and budget > max_overhead_pct:
        raise LimitExceeded(
            f"limits.overhead_pct: {request.limits.overhead_pct:g} % is above this agent's"
            f" limit of {max_overhead_pct:g} % of a CPU"
        )
    params = spec.check(request, confined=cgroup_base is not None)
    if spec.engine == "bpftrace":  # no C: the script and its scope are the engine's
        return PreparedTrace(request, spec, params, str(params["script"]), [])
    defines: dict[str, str | int] = {"FT_MAP_ENTRIES": request.limits.map_entries}
    defines.update(scope_defines(request.scope, cgroup_base))
    defines.update(spec.defines(params))
    body = request.source if spec.source_policy is not None and request.source else spec.source()
    source = PRELUDE.read_text() + "\n" + body
    cflags = [f"-D{name}={value}" for name, value in defines.items()]
    return PreparedTrace(request, spec, params, source, cflags)


def preflight(spec: ProgramSpec, tracefs: Path = TRACEFS) -> None:
    """Check the attach points a program needs before compiling it, naming what is missing."""
    if Feature.kprobes in spec.features and not (tracefs / "kprobe_events").exists():
        raise UnsupportedProgram(f"{spec.name} needs kprobes, which this kernel does not provide")
    if Feature.uprobes in spec.features and not (tracefs / "uprobe_events").exists():
        raise UnsupportedProgram(f"{spec.name} needs uprobes, which this kernel does not provide")
    if Feature.btf in spec.features and not Path("/sys/kernel/btf/vmlinux").exists():
        raise UnsupportedProgram(f"{spec.name} needs kernel BTF (/sys/kernel/btf/vmlinux)")
    if spec.tracepoints and not (tracefs / "events").is_dir():
        raise UnsupportedProgram(f"{spec.name} needs tracefs mounted at {tracefs}")
    for tp in spec.tracepoints:
        category, _, event = tp.partition(":")
        if not (tracefs / "events" / category / event).is_dir():
            raise UnsupportedProgram(f"{spec.name} needs tracepoint {tp}, missing on this kernel")


class _Samples:
    """The most recent N events of a program's perf output, and how many were seen or lost."""

    def __init__(self, spec: SampleSpec, keep: int) -> None:
        self.spec = spec
        self.recent: deque[list[KeyValue | float]] = deque(maxlen=keep)
        self.seen = 0
        self.lost = 0

    def on_event(self, event: Any) -> None:
        self.seen += 1
        self.recent.append(self.spec.row(event))

    def on_lost(self, count: int) -> None:
        self.lost += count

    def result(self) -> EventSamples:
        return EventSamples(
            name=self.spec.name,
            fields=list(self.spec.fields),
            events=list(self.recent),
            seen=self.seen,
            dropped=max(0, self.seen - len(self.recent)) + self.lost,
        )


def _counter_sum(program: LoadedProgram, table: str) -> int:
    return sum(int(getattr(v, "value", v)) for _, v in program.items(table))


@dataclass
class _Snapshotter:
    """Takes the snapshots; their intervals are wall time, which leaves the process."""

    prepared: PreparedTrace
    program: LoadedProgram
    samples: _Samples | None
    compile_s: float
    attach_s: float
    meter: OverheadMeter | None = None
    attach_point: str | None = None
    seq: int = 0
    last: float = field(default_factory=time.time)  # the next snapshot's interval_start

    def take(self, *, final: bool) -> Snapshot:
        request = self.prepared.request
        ctx = DecodeContext(self.program, self.prepared.params, request.limits, request.maps)
        results: list[Result] = list(self.prepared.spec.decode(ctx))
        lost = _counter_sum(self.program, "ft_lost")
        if self.samples is not None:
            results.append(self.samples.result())
            lost += self.samples.lost
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cost = self.meter.total() if self.meter is not None else None
        now = time.time()
        snapshot = Snapshot(
            run_id=request.run_id,
            seq=self.seq,
            interval_start=self.last,
            interval_end=now,
            final=final,
            results=results,
            stats=SnapshotStats(
                events_lost=lost,
                map_full_drops=_counter_sum(self.program, "ft_drops"),
                rows_truncated=any(getattr(r, "truncated", False) for r in results),
                compile_s=round(self.compile_s, 4),
                attach_s=round(self.attach_s, 4),
                agent_cpu_s=round(usage.ru_utime + usage.ru_stime, 4),
                peak_rss_mb=round(usage.ru_maxrss / 1024, 1),
                bpf_run_time_s=round(cost.bpf_s, 6) if cost else 0.0,
                bpf_runs=cost.bpf_runs if cost else 0,
                events_per_s=round(cost.events_per_s, 1) if cost else 0.0,
                overhead_pct=round(cost.percent, 3) if cost else None,
                attach=self.attach_point,
            ),
        )
        self.seq += 1
        self.last = now
        return snapshot


def execute(
    prepared: PreparedTrace,
    runtime: Runtime,
    emit: Emit,
    stop: threading.Event,
    *,
    features: Mapping[Feature, bool] | None = None,
    feature_errors: Mapping[Feature, str] | None = None,
) -> RunState:
    """Run a prepared trace to its deadline or until stop is set; emit snapshots and states.

    `features`: the agent's probe, which picks a program's attach option (None: found here).
    """
    request = prepared.request
    spec = prepared.spec
    point: str | None = None
    try:
        preflight(spec)
        cflags = prepared.cflags
        fields: dict[str, str] = {}
        if spec.attach:
            wanted = str(prepared.params["attach"])
            option = choose(spec, wanted, features, feature_errors)
            cflags, point = [*cflags, f"-D{option.define}=1"], option.point
            fields = dict(option.fields)
        program, compile_s, attach_s = runtime.load(prepared.source, cflags, kernel_fields=fields)
    except FleettraceError as exc:
        state = RunState.unsupported if isinstance(exc, UnsupportedProgram) else RunState.failed
        emit(StateChange(run_id=request.run_id, state=state, error=exc.to_error()))
        return state
    meter: OverheadMeter | None = None
    try:
        extra_attach = time.monotonic()
        for sample in spec.perf_samples:
            program.attach_perf_sample(sample.fn, int(prepared.params[sample.frequency_param]))
        samples = None
        if spec.samples is not None:
            samples = _Samples(spec.samples, request.limits.max_samples)
            program.open_events(spec.samples.table, samples.on_event, samples.on_lost)
        attach_s += time.monotonic() - extra_attach
        if request.limits.overhead_pct is not None:
            meter = runtime.cost_meter()
        snapshots = _Snapshotter(prepared, program, samples, compile_s, attach_s, meter, point)
        # Read the (still empty) maps once now: a missing map fails the run at once, not at the end.
        spec.decode(DecodeContext(program, prepared.params, request.limits, request.maps))
        emit(StateChange(run_id=request.run_id, state=RunState.running))
        log.info(
            "run %s: %s attached%s (compile %.2fs)",
            request.run_id,
            spec.name,
            f" by {point}" if point else "",
            compile_s,
        )
        # Durations on the monotonic clock: a wall clock step must not cut or stretch a trace
        # (the runner's supervisor counts the same deadline on it).
        started = time.monotonic()
        deadline = started + request.duration_s
        interval = request.interval_s
        next_snapshot = started + interval if interval else deadline
        next_cost = started + COST_EVERY_S
        over: str | None = None
        while not stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            if meter is not None and request.limits.overhead_pct and now >= next_cost:
                next_cost = now + COST_EVERY_S
                meter.sample()
                over = meter.over_budget(request.limits.overhead_pct)
                if over:
                    break
            if now >= next_snapshot and interval:
                emit(snapshots.take(final=False))
                next_snapshot += interval * max(1, int((now - next_snapshot) // interval) + 1)
            wait_ms = min(POLL_MS, max(1, int((min(deadline, next_snapshot) - now) * 1000)))
            program.poll_events(wait_ms)
        emit(snapshots.take(final=True))
        if over:
            log.warning("run %s: stopped by the overhead guard: %s", request.run_id, over)
            error = TraceError(code=ErrorCode.limit_exceeded, message=over)
            emit(StateChange(run_id=request.run_id, state=RunState.failed, error=error))
            return RunState.failed
        state = RunState.cancelled if stop.is_set() else RunState.succeeded
        emit(StateChange(run_id=request.run_id, state=state))
        return state
    except FleettraceError as exc:
        emit(StateChange(run_id=request.run_id, state=RunState.failed, error=exc.to_error()))
        return RunState.failed
    finally:
        program.close()
        if meter is not None:
            meter.close()
