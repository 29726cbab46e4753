"""Test helpers: run a real trace through the runner and collect what it emits."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from node_agent.kinds.histogram import Buckets, Scale, summarize
from node_agent.kinds.log2_histogram import LOG2
from node_agent.protocol import (
    CounterTable,
    EventSamples,
    FoldedStacks,
    Log2Histogram,
    Result,
    RunEvent,
    RunState,
    Snapshot,
    StateChange,
    TraceRequest,
)
from node_agent.runner import TraceRunner


def snapshots_of(events: Iterable[object]) -> list[Snapshot]:
    """The snapshots among a run's events, in the order sent."""
    return [e for e in events if isinstance(e, Snapshot)]


def is_running(event: object) -> bool:
    """Whether an event is the run's change to running (its programs are attached)."""
    return isinstance(event, StateChange) and event.state is RunState.running


@dataclass
class TraceOutcome:
    final: StateChange
    events: list[RunEvent] = field(default_factory=list)

    @property
    def snapshots(self) -> list[Snapshot]:
        return snapshots_of(self.events)

    @property
    def running(self) -> StateChange:
        change = next(e for e in self.events if is_running(e))
        assert isinstance(change, StateChange)
        return change

    @property
    def last(self) -> Snapshot:
        snaps = self.snapshots
        assert snaps, f"no snapshot; final state {self.final}"
        return snaps[-1]

    def results(self, kind: type[Result]) -> list[Result]:  # type: ignore[valid-type]
        return [r for r in self.last.results if isinstance(r, kind)]

    def table(self, name: str | None = None) -> CounterTable:
        for r in self.last.results:
            if isinstance(r, CounterTable) and (name is None or r.name == name):
                return r
        raise AssertionError(f"no counter table {name!r} in {self.last.results}")

    def histograms(self) -> list[Log2Histogram]:
        return [r for r in self.last.results if isinstance(r, Log2Histogram)]

    def stacks(self) -> FoldedStacks:
        return next(r for r in self.last.results if isinstance(r, FoldedStacks))

    def samples(self) -> EventSamples:
        return next(r for r in self.last.results if isinstance(r, EventSamples))


def run_trace(
    request: TraceRequest,
    workload: Callable[[], None] | None = None,
    *,
    on_final: Callable[[], None] | None = None,
    end_when_done: bool = False,
    **runner_kwargs: object,
) -> TraceOutcome:
    """Run a trace; start `workload` in a thread once the program is attached (and call
    `on_final`, e.g. to stop an endless workload, when the run ends). With `end_when_done`,
    the trace is stopped (as a cancel: final snapshot, state cancelled) once `workload`
    returns or raises, instead of running its whole duration."""
    outcome_events: list[RunEvent] = []
    attached, ended = threading.Event(), threading.Event()

    def on_event(event: RunEvent) -> None:
        outcome_events.append(event)
        if isinstance(event, StateChange) and event.state.value == "running":
            attached.set()
        if isinstance(event, StateChange) and event.state.final:
            ended.set()
            attached.set()
            if on_final is not None:
                on_final()

    runner = TraceRunner(request, on_event, **runner_kwargs)  # type: ignore[arg-type]
    worker: threading.Thread | None = None
    if workload is not None:

        def delayed() -> None:
            try:
                # No bound of its own: the runner's compile timeout ends a run that never
                # attaches, and run() returning sets `attached`.
                attached.wait()
                if not ended.is_set():
                    workload()
            finally:
                if end_when_done:
                    runner.cancel()

        worker = threading.Thread(target=delayed, daemon=True)
        worker.start()
    final = runner.run()
    ended.set()
    attached.set()
    if worker is not None:
        worker.join(timeout=60)
    return TraceOutcome(final=final, events=outcome_events)


def compile_c(source: str, out: Path, *flags: str) -> Path:
    """Build a small C helper with frame pointers and symbols, for stacks and uprobes."""
    src = out.with_suffix(".c")
    src.write_text(source)
    subprocess.run(
        ["gcc", "-O0", "-g", "-fno-omit-frame-pointer", "-o", str(out), str(src), *flags],
        check=True,
    )
    return out


def row_value(table: CounterTable, **key: object) -> int:
    """Sum of the first value over rows whose named key fields equal the given ones."""
    names = [f.name for f in table.key_fields]
    total = 0
    for keys, values in table.rows:
        fields = dict(zip(names, keys, strict=True))
        if all(fields.get(k) == v for k, v in key.items()):
            total += values[0]
    return total


def loaded_bpf_programs() -> dict[int, str]:
    """Every BPF program loaded in the kernel now, id -> name (from bpftool)."""
    import json

    out = subprocess.run(
        ["bpftool", "-j", "prog", "show"], check=True, capture_output=True, text=True
    ).stdout
    return {int(p["id"]): str(p.get("name", "")) for p in json.loads(out or "[]")}


def run_in_own_mounts(
    script: Path, env: dict[str, str], timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """`bash script` in a mount namespace of its own (its mounts vanish with it); it must
    succeed."""
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "bash", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert done.returncode == 0, done.stderr
    return done


def cgroup_name(name: str) -> str:
    """The name tests/conftest.py's make_cgroup gives the group it makes as `name`."""
    return f"fleettrace-test-{os.getpid()}-{name}"


def spawn_waiting(script: str, *args: str) -> subprocess.Popen[str]:
    """`python -c script args...`, which waits for a line on its stdin before it works."""
    return subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE, text=True)


def go(started: list[subprocess.Popen[str]], *, succeed: bool = False) -> None:
    """Tell every waiting process to start, then wait for them all to finish (with succeed,
    each must exit 0)."""
    for proc in started:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in started:
        code = proc.wait(timeout=30)
        assert code == 0 or not succeed, f"{proc.args} exited with {code}"


def percentile(buckets: Buckets, p: float, scale: Scale = LOG2) -> int | None:
    """One percentile of a histogram, through the kinds' own summary."""
    return summarize(buckets, scale, (p,)).percentiles[p]
