"""bpftrace for real, through the runner and its child: exact counts, snapshots, cancel,
errors, a bpftrace that overruns its deadline, and scopes (pid, comm, cgroup subtree)."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node_agent.protocol import (
    CounterTable,
    ErrorCode,
    RunEvent,
    RunState,
    Scope,
    Snapshot,
    TraceRequest,
)
from node_agent.runner import ChildPool, TraceRunner
from node_agent.selfstats import family
from node_agent.zygote import Zygote
from tests.helpers import TraceOutcome, is_running, row_value, snapshots_of

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("bpftrace") is None, reason="needs bpftrace"),
]

COUNT_BY_COMM = "tracepoint:syscalls:sys_enter_getppid { @[comm] = count(); }"
COUNT_BY_PID = "tracepoint:syscalls:sys_enter_getppid { @[pid] = count(); }"

# Names itself (prctl PR_SET_NAME), then makes exactly N getppid calls per line N it reads.
WORKER = r"""
import ctypes, os, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
for line in sys.stdin:
    for _ in range(int(line)):
        os.getppid()
    print("done", flush=True)
"""


class Worker:
    def __init__(self, comm: str, cgroup: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, comm],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(self.proc.pid))

    def calls(self, n: int) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "done\n"


@pytest.fixture
def workers() -> Iterator[Callable[..., Worker]]:
    made: list[Worker] = []

    def make(comm: str, cgroup: Path | None = None) -> Worker:
        made.append(Worker(comm, cgroup))
        return made[-1]

    yield make
    for worker in made:
        worker.proc.kill()
        worker.proc.wait(timeout=10)


def _request(script: str, **fields: object) -> TraceRequest:
    # The machine is shared: another test's getppid storm must not trip the overhead guard
    # (measured all the same; one test below sets a real budget).
    values: dict[str, object] = {
        "run_id": "bt",
        "program": "bpftrace",
        "duration_s": 3,
        "limits": {"overhead_pct": 400},
    }
    values.update(fields)
    values["params"] = {"script": script}
    return TraceRequest.model_validate(values)


class Run:
    """A trace in a thread: wait for it to be running, act, then take its outcome."""

    def __init__(
        self, request: TraceRequest, pool: ChildPool | None = None, cgroup_base: str | None = None
    ) -> None:
        self.events: list[RunEvent] = []
        self.attached = threading.Event()
        self.runner = TraceRunner(
            request, self._on_event, allow_bpftrace=True, pool=pool, cgroup_base=cgroup_base
        )
        self.outcome: TraceOutcome | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _on_event(self, event: RunEvent) -> None:
        self.events.append(event)
        if is_running(event):
            self.attached.set()

    def _run(self) -> None:
        final = self.runner.run()
        self.outcome = TraceOutcome(final=final, events=self.events)
        self.attached.set()

    def wait_running(self) -> None:
        assert self.attached.wait(120) and self.outcome is None, self.outcome

    def wait_snapshots(self, n: int, timeout: float = 30) -> list[Snapshot]:
        deadline = time.monotonic() + timeout
        while len(snapshots_of(self.events)) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return snapshots_of(self.events)

    def bpftrace_pid(self) -> int:
        assert self.runner.child_pid is not None
        for pid in family(self.runner.child_pid):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "bpftrace":
                    return pid
            except OSError:
                continue
        raise AssertionError("no bpftrace below the trace's child")

    def result(self, timeout: float = 60) -> TraceOutcome:
        self.thread.join(timeout)
        assert self.outcome is not None
        return self.outcome


def _succeeds(run: Run, *work: tuple[Worker, int]) -> TraceOutcome:
    """Once `run` is attached each worker makes its calls; the run must then succeed."""
    run.wait_running()
    for worker, calls in work:
        worker.calls(calls)
    outcome = run.result()
    assert outcome.final.state is RunState.succeeded, outcome.final
    return outcome


def _count(outcome: TraceOutcome, **key: object) -> int:
    table = outcome.table("@")
    assert isinstance(table, CounterTable)
    return row_value(table, **key)


def _program_ids(pid: int) -> set[int]:
    ids = set()
    for entry in Path(f"/proc/{pid}/fdinfo").iterdir():
        for line in entry.read_text().splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


def _still_loaded(ids: set[int], timeout: float = 5.0) -> set[int]:
    """Of these BPF program ids, those the kernel still has (it frees them asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        left = set()
        for prog_id in ids:
            shown = subprocess.run(
                ["bpftool", "prog", "show", "id", str(prog_id)], capture_output=True
            )
            if shown.returncode == 0:
                left.add(prog_id)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_exactly_n_calls_counted_by_the_comm_the_process_set(
    workers: Callable[..., Worker],
) -> None:
    worker = workers("ft-bt-exact")
    outcome = _succeeds(Run(_request(COUNT_BY_COMM, duration_s=2)), (worker, 357))
    assert _count(outcome, key0="ft-bt-exact") == 357
    final = outcome.last
    assert final.final and final.stats.attach_s > 0
    assert final.stats.agent_cpu_s > 0 and final.stats.peak_rss_mb > 10
    assert final.stats.overhead_pct is not None  # measured on bpftrace's own programs
    assert final.stats.bpf_runs >= 357


def test_increments_are_counted_tables_at_every_interval(workers: Callable[..., Worker]) -> None:
    # The commonest idioms: `@[comm]++`, `@[k] += n`, `++@n`: sums, printed at each interval.
    worker = workers("ft-bt-incr")
    script = "tracepoint:syscalls:sys_enter_getppid { @[comm]++; @twice[comm] += 2; ++@n; }"
    run = Run(_request(script, duration_s=3, interval_s=0.5))
    run.wait_running()
    worker.calls(61)
    first = run.wait_snapshots(len(snapshots_of(run.events)) + 2)[-1]
    outcome = _succeeds(run, (worker, 39))
    assert _count(outcome, key0="ft-bt-incr") == 100
    twice = outcome.table("@twice")
    assert isinstance(twice, CounterTable) and twice.aggregations == ["sum"]
    assert row_value(twice, key0="ft-bt-incr") == 200
    increments = outcome.table("@n")  # every getppid on the host (bpftrace's ++ may race)
    assert isinstance(increments, CounterTable) and increments.rows[0][1][0] >= 100
    shown = {r.name for r in first.results if isinstance(r, CounterTable)}
    assert {"@", "@twice", "@n"} <= shown  # printed at the interval, not only at the end


def test_interval_snapshots_are_cumulative(workers: Callable[..., Worker]) -> None:
    worker = workers("ft-bt-cumul")
    run = Run(_request(COUNT_BY_COMM, duration_s=4, interval_s=0.5))
    run.wait_running()
    worker.calls(100)
    first = run.wait_snapshots(len(snapshots_of(run.events)) + 2)[-1]
    worker.calls(23)
    outcome = run.result()
    assert outcome.final.state is RunState.succeeded, outcome.final
    snaps = outcome.snapshots
    assert [s.seq for s in snaps] == list(range(len(snaps))) and len(snaps) >= 6
    assert [s.final for s in snaps].count(True) == 1 and snaps[-1].final

    def counted(snapshot: Snapshot) -> int:
        tables = [r for r in snapshot.results if isinstance(r, CounterTable) and r.name == "@"]
        return row_value(tables[0], key0="ft-bt-cumul") if tables else 0

    assert counted(first) == 100
    counts = [counted(s) for s in snaps]
    assert counts == sorted(counts) and counts[-1] == 123
    for earlier, later in itertools.pairwise(snaps):
        assert later.interval_start == earlier.interval_end


def test_cancel_stops_and_keeps_the_counts(workers: Callable[..., Worker]) -> None:
    worker = workers("ft-bt-cancel")
    run = Run(_request(COUNT_BY_COMM, duration_s=120))
    run.wait_running()
    bpftrace = run.bpftrace_pid()
    ids = _program_ids(bpftrace)
    worker.calls(42)
    cancelled = time.monotonic()
    run.runner.cancel()
    outcome = run.result()
    assert time.monotonic() - cancelled < 5
    assert outcome.final.state is RunState.cancelled and outcome.final.error is None
    assert _count(outcome, key0="ft-bt-cancel") == 42
    assert ids and _still_loaded(ids) == set()


def test_a_script_that_does_not_parse_fails_with_its_line() -> None:
    script = "// counts\ntracepoint:syscalls:sys_enter_getppid {\n  @x = 1 +;\n}"
    outcome = Run(_request(script)).result()
    assert outcome.final.state is RunState.failed
    error = outcome.final.error
    assert error is not None and error.code is ErrorCode.compile_error
    assert error.message.startswith("bpftrace: line 3: syntax error")
    assert "@x = 1 +;" in error.message
    assert error.detail is not None and "3 |   @x = 1 +;" in error.detail
    assert "/tmp" not in error.message  # the temp file's path is not the user's business
    assert not any(is_running(e) for e in outcome.events)


@pytest.mark.parametrize(
    ("script", "code", "text"),
    [
        (
            "tracepoint:syscalls:sys_enter_nosuch { @ = count(); }",
            ErrorCode.attach_failed,
            "tracepoint not found",
        ),
        ("BEGIN { @x = nosuch(1); }", ErrorCode.compile_error, "line 1: Unknown function: nosuch"),
        (
            "uprobe:/bin/sh:ft_no_such_function { @ = count(); }",
            ErrorCode.attach_failed,
            "matched nothing",
        ),
        (
            "BEGIN { $a = 0; while (1) { $a++; } }",
            ErrorCode.verifier_rejected,
            "Error loading program: BEGIN",
        ),
    ],
)
def test_bpftrace_errors_have_their_code(script: str, code: ErrorCode, text: str) -> None:
    outcome = Run(_request(script)).result()
    assert outcome.final.state is RunState.failed
    assert outcome.final.error is not None
    assert outcome.final.error.code is code, outcome.final.error
    assert text in outcome.final.error.message
    if code is ErrorCode.verifier_rejected:
        assert "infinite loop detected" in (outcome.final.error.detail or "")


def test_a_refused_script_never_starts_bpftrace() -> None:
    run = Run(_request('BEGIN { system("touch /tmp/ft-owned"); }'))
    outcome = run.result()
    assert outcome.final.state is RunState.failed
    assert outcome.final.error is not None and outcome.final.error.code is ErrorCode.policy
    assert "system() is not allowed" in outcome.final.error.message
    assert run.runner.child_pid is None  # refused before any process was started
    assert not Path("/tmp/ft-owned").exists()


def test_a_stopped_bpftrace_is_killed_and_its_last_snapshot_kept(
    workers: Callable[..., Worker],
) -> None:
    worker = workers("ft-bt-stuck")
    run = Run(_request(COUNT_BY_COMM, duration_s=2, interval_s=0.3, grace_s=2))
    run.wait_running()
    bpftrace = run.bpftrace_pid()
    ids = _program_ids(bpftrace)
    worker.calls(77)
    seen = len(snapshots_of(run.events))
    run.wait_snapshots(seen + 2)
    os.kill(bpftrace, signal.SIGSTOP)
    worker.calls(5)  # counted in the kernel, never printed: not in the results
    outcome = run.result()
    assert outcome.final.state is RunState.timed_out
    error = outcome.final.error
    assert error is not None and error.code is ErrorCode.killed
    assert "did not stop within" in error.message and "last snapshot" in error.message
    assert outcome.last.final and _count(outcome, key0="ft-bt-stuck") == 77
    assert not Path(f"/proc/{bpftrace}").exists()
    assert ids and _still_loaded(ids) == set()


def test_pid_scope_counts_only_that_process(workers: Callable[..., Worker]) -> None:
    inside, outside = workers("ft-bt-pid"), workers("ft-bt-pid")
    run = Run(_request(COUNT_BY_COMM, scope=Scope(pid=inside.proc.pid)))
    outcome = _succeeds(run, (inside, 11), (outside, 13))
    assert _count(outcome, key0="ft-bt-pid") == 11


def test_comm_scope_with_a_hostile_name(workers: Callable[..., Worker]) -> None:
    name = 'a"b,c\\d'
    inside, outside = workers(name), workers("ft-bt-other")
    outcome = _succeeds(
        Run(_request(COUNT_BY_COMM, scope=Scope(comm=name))), (inside, 9), (outside, 4)
    )
    table = outcome.table("@")
    # One key field (the script says so): the commas in the name do not split it.
    assert [(keys, values) for keys, values in table.rows] == [([name], [9])]


def test_cgroup_scope_counts_the_group_and_its_children_only(
    workers: Callable[..., Worker], make_cgroup: Callable[[str], Path]
) -> None:
    group = make_cgroup("bt-scope")
    child = group / "child"
    child.mkdir()
    try:
        in_group = workers("ft-bt-cg", group)
        in_child = workers("ft-bt-cg", child)
        outside = workers("ft-bt-cg")
        run = Run(_request(COUNT_BY_PID, scope=Scope(cgroup=group.name)))
        outcome = _succeeds(run, (in_group, 5), (in_child, 7), (outside, 3))
        assert _count(outcome, key0=in_group.proc.pid) == 5
        assert _count(outcome, key0=in_child.proc.pid) == 7
        assert _count(outcome, key0=outside.proc.pid) == 0
    finally:
        for worker_group in (child,):
            for pid in (worker_group / "cgroup.procs").read_text().split():
                (group.parent / "cgroup.procs").write_text(pid)
            worker_group.rmdir()


def _caught_before_attach(run: Run) -> int | None:
    """bpftrace's pid if it is seen while still compiling (not attached yet), else None."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not run.attached.is_set():
        with contextlib.suppress(AssertionError):
            bpftrace = run.bpftrace_pid()
            if not run.attached.is_set():
                return bpftrace
        time.sleep(0.005)
    return None


def _miss(bpftrace: int | None, attached: bool, outcome: TraceOutcome) -> str:
    """One missed attempt: what was seen and how the run ended, with its error."""
    error = outcome.final.error
    ended = f"{error.code.value}: {error.message}" if error is not None else "no error"
    seen = "bpftrace seen compiling" if bpftrace is not None else "bpftrace not seen compiling"
    return (
        f"  {seen}, {'attached' if attached else 'not attached'};"
        f" final {outcome.final.state.value} ({ended})"
    )


def test_cancel_before_attach_leaves_nothing_running() -> None:
    # bpftrace attaches one tracepoint within ~100 ms of its start: a loaded machine can
    # deschedule this poll (or the cancel) for longer. A run that attached is stopped, and
    # another started.
    misses: list[str] = []
    for _ in range(5):
        run = Run(_request(COUNT_BY_COMM, duration_s=60))
        bpftrace = _caught_before_attach(run)
        run.runner.cancel()
        outcome = run.result()
        # It may still attach between the poll and the cancel: that run missed too.
        attached = any(is_running(e) for e in outcome.events)
        if bpftrace is not None and not attached:
            break
        misses.append(_miss(bpftrace, attached, outcome))
    else:
        # A run that fails for another reason (no bpftrace, a child that cannot start) says so.
        pytest.fail(
            "bpftrace was never cancelled before its attach in 5 runs:\n" + "\n".join(misses)
        )
    assert outcome.final.state is RunState.cancelled, outcome.final
    assert not Path(f"/proc/{bpftrace}").exists()


def test_overhead_guard_stops_a_trace_over_its_budget(workers: Callable[..., Worker]) -> None:
    worker = workers("ft-bt-busy")
    limits = {"overhead_pct": 0.01}  # bpftrace's own polling costs more than this
    run = Run(_request(COUNT_BY_COMM, duration_s=60, interval_s=1, limits=limits))
    run.wait_running()
    worker.calls(1000)
    outcome = run.result(timeout=30)
    assert outcome.final.state is RunState.failed
    error = outcome.final.error
    assert error is not None and error.code is ErrorCode.limit_exceeded
    assert "overhead" in error.message
    assert outcome.last.final and _count(outcome, key0="ft-bt-busy") == 1000
    assert (outcome.last.stats.overhead_pct or 0) > 0.01


def test_bpftrace_dies_with_the_trace_process() -> None:
    run = Run(_request(COUNT_BY_COMM, duration_s=60))
    run.wait_running()
    bpftrace = run.bpftrace_pid()
    ids = _program_ids(bpftrace)
    assert run.runner.child_pid is not None
    os.kill(run.runner.child_pid, signal.SIGKILL)  # as if the agent's child were OOM-killed
    outcome = run.result()
    assert outcome.final.state is RunState.failed
    deadline = time.monotonic() + 10
    while Path(f"/proc/{bpftrace}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{bpftrace}").exists()  # PR_SET_PDEATHSIG, though not our child
    assert ids and _still_loaded(ids) == set()


def test_a_tricky_script_runs_scoped_with_exact_counts(workers: Callable[..., Worker]) -> None:
    # Braces and slashes in strings, a dividing predicate over two lines with a comment,
    # `system(` in a comment: the scope still lands in the predicate, on the same lines.
    script = """// system("id") is only a comment
tracepoint:syscalls:sys_enter_getppid,
tracepoint:syscalls:sys_enter_getpgrp
/ pid / 1 > 0 // "}{"
/
{
    $s = "}{ /* not a comment */ \\" /";
    @[comm, probe] = count();
}
END { printf("%s\\n", "} done {"); }
"""
    inside, outside = workers("ft-bt-tricky"), workers("ft-bt-tricky")
    run = Run(_request(script, scope=Scope(pid=inside.proc.pid), interval_s=0.5))
    outcome = _succeeds(run, (inside, 21), (outside, 8))
    table = outcome.table("@")
    assert sum(values[0] for _, values in table.rows) == 21
    assert "} done {" in str(outcome.samples().events)


def test_the_workers_zygote_children_run_bpftrace(workers: Callable[..., Worker]) -> None:
    zygote = Zygote.spawn()
    pool = ChildPool(zygote)
    try:
        for n in (31, 32):  # the warm spare (bcc loaded) and the next one
            worker = workers(f"ft-bt-zyg{n}")
            outcome = _succeeds(Run(_request(COUNT_BY_COMM, duration_s=1), pool=pool), (worker, n))
            assert _count(outcome, key0=f"ft-bt-zyg{n}") == n
    finally:
        pool.close()


def test_a_confined_agent_counts_only_its_own_cgroup(
    workers: Callable[..., Worker], make_cgroup: Callable[[str], Path]
) -> None:
    base, other = make_cgroup("bt-agent"), make_cgroup("bt-other")
    mine, theirs = workers("ft-bt-conf", base), workers("ft-bt-conf", other)
    run = Run(_request(COUNT_BY_PID), cgroup_base=f"/{base.name}")  # no scope in the request
    outcome = _succeeds(run, (mine, 6), (theirs, 4))
    assert _count(outcome, key0=mine.proc.pid) == 6
    assert _count(outcome, key0=theirs.proc.pid) == 0


def test_a_script_that_exits_by_itself_ends_with_its_maps(workers: Callable[..., Worker]) -> None:
    worker = workers("ft-bt-exit")
    script = COUNT_BY_COMM + "\ninterval:ms:1500 { exit(); }"
    outcome = _succeeds(Run(_request(script, duration_s=60)), (worker, 14))
    assert outcome.last.final and _count(outcome, key0="ft-bt-exit") == 14
    running = outcome.running
    assert outcome.last.interval_end - running.at < 10  # long before its 60 s
