"""Run a prepared bpftrace trace: the host's bpftrace under the trace's deadline, grace, cancel,
memory limit and overhead budget; its printed maps become snapshots.

`bpftrace -v -f json FILE` (never --unsafe) in its own process group, SIGKILLed if this child
dies (PR_SET_PDEATHSIG). stdout is one JSON object per line plus, with -v, the ids and
verifier logs of the programs it loads (so a verifier rejection comes back with its log).
A snapshot is taken at each interval marker's end and one after bpftrace exits, from the
maps it prints on SIGINT. A bpftrace that does not stop within part of the grace is
SIGKILLed; the last snapshot then stands as the final one.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from node_agent.bpftrace.cost import BpftraceCost
from node_agent.bpftrace.diagnostics import diagnose
from node_agent.bpftrace.instrument import instrument, scope_predicate
from node_agent.bpftrace.keys import parse_keys
from node_agent.bpftrace.output import Maps
from node_agent.bpftrace.process import EOF, MAX_LINE, TOO_LONG, Bpftrace, find_bpftrace
from node_agent.bpftrace.script import key_kinds, lhist_args, map_functions, minimum_probes
from node_agent.errors import AttachError, FleettraceError, UnsupportedProgram
from node_agent.protocol import ErrorCode, Result, RunState, Snapshot, StateChange, TraceError
from node_agent.trace import COST_EVERY_S, Emit, PreparedTrace

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often the loop looks at stop, deadline and budget
KILL_SHARE = 0.6  # of the grace: SIGKILL then, leaving the rest for the final snapshot
RESEND_S = 0.5  # SIGINT again this often until bpftrace exits


def run_script(
    prepared: PreparedTrace, emit: Emit, stop: threading.Event, *, cgroup_base: str | None
) -> RunState:
    """Run the script to its deadline or until stop is set; emit snapshots and states."""
    request = prepared.request
    source = prepared.source
    try:
        binary = find_bpftrace()
        marker = f"fleettrace-{secrets.token_hex(8)}"
        predicate = scope_predicate(request.scope, cgroup_base)
        text = instrument(
            source, scope_predicate=predicate, interval_s=request.interval_s, marker=marker
        )
        maps = Maps(
            limits=request.limits,
            functions=map_functions(source),
            keys=parse_keys(str(prepared.params.get("keys") or "")),
            lhist=lhist_args(source),
            key_kinds=key_kinds(source),
        )
    except FleettraceError as exc:
        state = RunState.unsupported if isinstance(exc, UnsupportedProgram) else RunState.failed
        emit(StateChange(run_id=request.run_id, state=state, error=exc.to_error()))
        return state
    with tempfile.TemporaryDirectory(prefix="fleettrace-bpftrace-") as tmp:
        path = Path(tmp) / "script.bt"  # the directory is private (0700)
        path.write_text(text)
        session = _Session(prepared, emit, stop, maps, marker, minimum_probes(text))
        return session.run(binary, path)


class _Session:
    """One bpftrace process, from spawn to its final state."""

    def __init__(
        self,
        prepared: PreparedTrace,
        emit: Emit,
        stop: threading.Event,
        maps: Maps,
        marker: str,
        minimum_probes: int,
    ) -> None:
        self.prepared = prepared
        self.request = prepared.request
        self.emit = emit
        self.stop = stop
        self.maps = maps
        self.attached = f"{marker} attached\n"
        self.begin, self.end = f"{marker} begin\n", f"{marker} end\n"
        self.started = time.monotonic()
        self.attach_s: float | None = None
        self.deadline = float("inf")
        self.interrupted: str | None = None  # why SIGINT was sent: "deadline", "stop", a budget
        self.kill_at = float("inf")
        self.resend_at = float("inf")
        self.minimum_probes = minimum_probes
        self.missing: str | None = None  # attach points that matched nothing
        self.bpftrace: Bpftrace | None = None
        self.seq = 0
        self.last_wall = time.time()
        self.kept: list[Result] | None = None  # the last snapshot's results
        self.program_ids: list[int] = []
        self.cost: BpftraceCost | None = None
        self.next_cost = float("inf")

    def run(self, binary: str, path: Path) -> RunState:
        bpftrace = self.bpftrace = Bpftrace(binary, path, self.request.limits)
        log.info("run %s: bpftrace started (pid %d)", self.request.run_id, bpftrace.pid)
        self.cost = BpftraceCost(bpftrace.pid)
        try:
            eof = False
            while not (eof and not bpftrace.running()):
                try:
                    item = bpftrace.lines.get(timeout=POLL_S)
                except queue.Empty:
                    item = None
                if item is EOF:
                    eof = True
                elif item is TOO_LONG:
                    self.maps.ignore(f"stdout line above {MAX_LINE} characters")
                    log.warning(
                        "run %s: a bpftrace output line above %d characters was left out",
                        self.request.run_id,
                        MAX_LINE,
                    )
                elif isinstance(item, str):
                    self._line(item)
                self._supervise(bpftrace)
        finally:
            code = bpftrace.reap()
        self.cost.reaped()
        try:
            return self._finish(code, bpftrace.stderr())
        finally:
            self.cost.close()

    def _line(self, line: str) -> None:
        if not line.strip():
            # Raw blank lines come before bpftrace's exit print of every map (and in -v's
            # attach output): what follows is a full print, so the maps start afresh.
            self.maps.reset()
            return
        try:
            message: Any = json.loads(line)
        except ValueError:
            number = line.removeprefix("Program ID:").strip()
            if line.startswith("Program ID:") and number.isdigit():
                self.program_ids.append(int(number))
            return
        if not isinstance(message, dict):
            return
        kind, data = message.get("type"), message.get("data")
        if kind == "attached_probes":
            self._count_probes(data)
        elif kind == "printf" and data == self.attached and self.attach_s is None:
            self._attached()
        elif kind == "printf" and data == self.begin:
            self.maps.reset()
        elif kind == "printf" and data == self.end:
            self.emit(self._snapshot(final=False))
        else:
            self.maps.take(message)

    def _count_probes(self, data: object) -> None:
        probes = data.get("probes") if isinstance(data, dict) else None
        if isinstance(probes, int) and probes < self.minimum_probes and self.bpftrace:
            self.missing = (
                f"bpftrace attached {probes} probes where the script names at least"
                f" {self.minimum_probes}: a function, symbol or tracepoint matched nothing"
            )
            self._interrupt(self.bpftrace, "missing")

    def _attached(self) -> None:
        now = time.monotonic()
        self.attach_s = now - self.started
        self.deadline = now + self.request.duration_s
        assert self.cost is not None
        if self.request.limits.overhead_pct is not None:
            self.cost.start_meter()
            self.next_cost = now + COST_EVERY_S
        self.emit(StateChange(run_id=self.request.run_id, state=RunState.running))
        log.info(
            "run %s: bpftrace attached in %.2fs (BPF programs %s)",
            self.request.run_id,
            self.attach_s,
            self.program_ids,
        )

    def _supervise(self, bpftrace: Bpftrace) -> None:
        now = time.monotonic()
        if not bpftrace.running():
            return
        if self.interrupted is None:
            if self.stop.is_set():
                self._interrupt(bpftrace, "stop")
            elif now >= self.deadline:
                self._interrupt(bpftrace, "deadline")
            elif now >= self.next_cost and self.cost is not None:
                self.next_cost = now + COST_EVERY_S
                budget = self.request.limits.overhead_pct
                over = self.cost.over_budget(budget) if budget else None
                if over:
                    log.warning(
                        "run %s: stopped by the overhead guard: %s", self.request.run_id, over
                    )
                    self._interrupt(bpftrace, over)
        elif not bpftrace.killed and now >= self.kill_at:
            log.warning("run %s: bpftrace did not stop in time; killing it", self.request.run_id)
            bpftrace.kill()
        elif not bpftrace.killed and now >= self.resend_at:
            # bpftrace 0.17 can miss a SIGINT that lands between its flag check and
            # epoll_wait (it then sleeps until the next event): another one wakes it. Once
            # it has taken one it resets SIGINT to the default: another would kill it
            # mid-exit (seen under emulation, where printing and detaching take seconds).
            self.resend_at = now + RESEND_S
            if bpftrace.catches_sigint():
                bpftrace.interrupt()

    def _interrupt(self, bpftrace: Bpftrace, why: str) -> None:
        self.interrupted = why
        now = time.monotonic()
        self.kill_at = now + self.request.grace_s * KILL_SHARE
        self.resend_at = now + RESEND_S
        bpftrace.interrupt()

    def _snapshot(self, *, final: bool, results: list[Result] | None = None) -> Snapshot:
        assert self.cost is not None
        now = time.time()
        results = self.maps.results() if results is None else results
        snapshot = Snapshot(
            run_id=self.request.run_id,
            seq=self.seq,
            interval_start=self.last_wall,
            interval_end=now,
            final=final,
            results=results,
            stats=self.cost.stats(
                results, attach_s=self.attach_s or 0.0, events_lost=self.maps.lost
            ),
        )
        self.seq += 1
        self.last_wall = now
        self.kept = results
        return snapshot

    def _finish(self, code: int, stderr: str) -> RunState:
        run_id = self.request.run_id
        why = self.interrupted
        error: TraceError | None = None
        if self.missing is not None:  # stopped at once, before BEGIN: nothing to report
            state, error = RunState.failed, AttachError(self.missing).to_error()
        elif self.bpftrace is not None and self.bpftrace.killed:
            state, error = self._killed(stderr)
        elif why == "stop":  # whatever bpftrace made of the SIGINT (before attach: it died)
            if self.attach_s is not None:
                self.emit(self._snapshot(final=True, results=self._final_results(code)))
            state = RunState.cancelled
        elif code != 0:
            if self.kept is not None:
                self.emit(self._snapshot(final=True, results=self.kept))
            state = RunState.failed
            error = diagnose(stderr, self.prepared.source, exit_code=code).to_error()
        else:
            self.emit(self._snapshot(final=True))
            state = RunState.succeeded
            if why is not None and why != "deadline":  # the overhead guard stopped it
                state, error = (
                    RunState.failed,
                    TraceError(code=ErrorCode.limit_exceeded, message=why),
                )
        log.info("run %s: bpftrace exited (code %d): %s", run_id, code, state.value)
        self.emit(StateChange(run_id=run_id, state=state, error=error))
        return state

    def _final_results(self, code: int) -> list[Result]:
        """After a clean exit every map was printed; otherwise the last snapshot stands."""
        return self.maps.results() if code == 0 else (self.kept or [])

    def _killed(self, stderr: str) -> tuple[RunState, TraceError]:
        """The last snapshot becomes the final one; the state says why bpftrace was stopped."""
        grace = f"{self.request.grace_s * KILL_SHARE:g}s"
        kept = "the last snapshot's results are kept" if self.kept else "no results"
        if self.attach_s is not None:
            self.emit(self._snapshot(final=True, results=self.kept or []))
        why = self.interrupted
        if why == "stop":
            state, when = RunState.cancelled, "the cancel"
        elif why == "deadline":
            state, when = RunState.timed_out, "its deadline"
        else:
            state, when = RunState.failed, f"the overhead guard's stop ({why})"
        message = f"bpftrace did not stop within {grace} of {when}; killed ({kept})"
        return state, TraceError(code=ErrorCode.killed, message=message, detail=stderr[-4000:])
