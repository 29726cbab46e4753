"""Run one trace in a child process, under a deadline plus grace, and relay its events.

A crash, a hung compile or a memory blow-up in the child cannot take the agent down; a
child that does not stop in time is killed, and the kernel then unloads what it attached.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Protocol

from pydantic import TypeAdapter, ValidationError

from node_agent.child import ChildStart
from node_agent.errors import FleettraceError
from node_agent.headers.kheaders import KheadersSource
from node_agent.protocol import (
    ErrorCode,
    HostCapabilities,
    Limits,
    RunEvent,
    RunState,
    Snapshot,
    StateChange,
    TraceError,
    TraceRequest,
    truncate_log,
)
from node_agent.trace import prepare
from node_agent.zygote import Zygote, ZygoteGone

log = logging.getLogger(__name__)

_EVENT = TypeAdapter(RunEvent)
_EOF = object()
STDERR_TAIL = 4096


DEFAULT_CHILD = (sys.executable, "-m", "node_agent.child")
KEEP_WARM_S = 60.0  # a warm child (bcc loaded) outlives the last trace by this long


class Process(Protocol):
    """What the runner uses of a child process: a Popen, or a child the zygote forked."""

    pid: int
    stdin: IO[str] | None
    stdout: IO[str] | None

    def poll(self) -> int | None: ...

    def wait(self) -> int: ...


@dataclass
class Child:
    """A started child process and the file its stderr goes to."""

    process: Process
    stderr: IO[bytes]

    @classmethod
    def spawn(cls, argv: Sequence[str]) -> Child:
        stderr = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - closed by the runner
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
        return cls(process, stderr)

    def discard(self) -> None:
        _kill(self.process)
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):  # a Popen's wait keeps them
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        self.stderr.close()


class ChildPool:
    """Trace children forked by the zygote (node_agent.zygote), so that a trace pays neither
    for process start-up nor for our imports: about 100 ms of the time to attach. While the
    agent is busy, one child forked ahead also has bcc loaded under the default memory limit
    (another ~40 ms), until `keep_warm_s` pass without a trace: an idle agent keeps no bcc
    loaded. While the zygote is down, a child is spawned cold and a new zygote started; while
    it is slow to answer, that one child is spawned cold; once it is retired (it stopped
    answering: node_agent.zygote) a new one is started too, the old one kept for its children
    until they exit or the pool closes."""

    def __init__(
        self,
        zygote: Zygote | None = None,
        *,
        memory_mb: int = Limits().memory_mb,
        keep_warm_s: float = KEEP_WARM_S,
    ) -> None:
        self.memory_mb = memory_mb
        self.keep_warm_s = keep_warm_s
        self._zygote = zygote
        self._lock = threading.Lock()
        self._spare: Child | None = None
        self._last_take = 0.0
        self._refilling = False
        self._replacing = False
        self._retired: list[Zygote] = []  # replaced while alive: closed with the pool
        self._closed = False

    def take(self, request: TraceRequest) -> Child:
        zygote = self._zygote
        if zygote is not None and zygote.serving():
            try:
                child = self._warm(request) or Child(*zygote.start_child())
                threading.Thread(target=self._refill, name="child-pool", daemon=True).start()
                return child
            except ZygoteGone as exc:
                log.warning("run %s: %s; spawning its child cold", request.run_id, exc)
        # A zygote that is only slow (a loaded host) keeps serving, its children with it,
        # until it is retired.
        if zygote is None or not zygote.serving():
            self._replace()
        return Child.spawn(DEFAULT_CHILD)

    def _warm(self, request: TraceRequest) -> Child | None:
        """The warm spare, if it fits the request's memory limit and is still alive."""
        if request.limits.memory_mb != self.memory_mb:
            return None
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None and spare.process.poll() is not None:
            spare.stderr.close()
            return None
        return spare

    def _refill(self) -> None:
        with self._lock:
            self._last_take = time.monotonic()
            zygote = self._zygote
            if self._closed or zygote is None:
                return
            wanted = self._spare is None and not self._refilling
            self._refilling = self._refilling or wanted
        if wanted:  # asked without the lock: a take does not wait for a slow zygote's answer
            try:
                spare: Child | None = Child(*zygote.start_child(warm_mb=self.memory_mb))
            except ZygoteGone as exc:
                log.warning("no warm child: %s", exc)
                spare = None
            with self._lock:
                self._refilling = False
                if not self._closed and self._spare is None:
                    self._spare, spare = spare, None
            if spare is not None:  # closed meanwhile
                spare.discard()
            if not zygote.serving():
                self._replace()
                return
        timer = threading.Timer(self.keep_warm_s, self._cool_down)
        timer.daemon = True
        timer.start()

    def _cool_down(self) -> None:
        """Drop the spare once `keep_warm_s` passed since the last trace began."""
        with self._lock:
            if time.monotonic() - self._last_take < self.keep_warm_s * 0.99:
                return  # a later take's timer will decide
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.discard()

    def _replace(self) -> None:
        """A new zygote, started beside (a fresh process: this one has threads by now)."""
        with self._lock:
            if self._replacing or self._closed:
                return
            self._replacing = True
        threading.Thread(target=self._start_zygote, name="zygote-start", daemon=True).start()

    def _start_zygote(self) -> None:
        try:
            zygote = Zygote.spawn()
        except OSError as exc:
            log.error("cannot start a new zygote: %s", exc)
            zygote = None
        with self._lock:
            self._replacing = False
            if self._closed and zygote is not None:
                zygote.close()
                return
            if zygote is not None:
                old, self._zygote = self._zygote, zygote
                if old is not None and old.alive():
                    self._retired.append(old)
                self._retired = [z for z in self._retired if z.alive()]
        if zygote is not None:
            log.info("a new zygote (pid %d) serves the next traces", zygote.pid)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            zygote, self._zygote = self._zygote, None
            spare, self._spare = self._spare, None
            retired, self._retired = self._retired, []
        if spare is not None:
            spare.discard()
        for each in [*retired, zygote]:
            if each is not None:
                each.close()


class TraceRunner:
    """Runs a TraceRequest to its final state; `cancel()` may be called from any thread."""

    def __init__(
        self,
        request: TraceRequest,
        on_event: Callable[[RunEvent], None],
        *,
        allow_custom: bool = False,
        allow_bpftrace: bool = False,
        max_duration_s: float = 3600.0,
        max_overhead_pct: float = 400.0,
        compile_timeout_s: float = 120.0,
        cgroup_base: str | None = None,
        capabilities: HostCapabilities | None = None,
        child_argv: Sequence[str] | None = None,
        pool: ChildPool | None = None,
        kheaders: KheadersSource | None = None,
    ) -> None:
        self.request = request
        self.on_event = on_event
        self.allow_custom = allow_custom
        self.allow_bpftrace = allow_bpftrace
        self.max_duration_s = max_duration_s
        self.max_overhead_pct = max_overhead_pct
        self.compile_timeout_s = compile_timeout_s
        self.cgroup_base = cgroup_base
        self.capabilities = capabilities  # the agent's probe: it picks attach options
        self.child_argv = list(child_argv or DEFAULT_CHILD)
        self.pool = pool
        self.kheaders = kheaders
        self._cancel = threading.Event()
        self.last_snapshot: Snapshot | None = None
        self.child_pid: int | None = None

    def cancel(self) -> None:
        self._cancel.set()

    def run(self) -> StateChange:
        run_id = self.request.run_id
        try:
            prepare(
                self.request,
                allow_custom=self.allow_custom,
                allow_bpftrace=self.allow_bpftrace,
                max_duration_s=self.max_duration_s,
                max_overhead_pct=self.max_overhead_pct,
                cgroup_base=self.cgroup_base,
            )
        except FleettraceError as exc:
            state = RunState.unsupported if exc.code is ErrorCode.unsupported else RunState.failed
            return self._final(StateChange(run_id=run_id, state=state, error=exc.to_error()))
        if self.pool is not None:
            child = self.pool.take(self.request)
        else:
            child = Child.spawn(self.child_argv)
        try:
            return self._supervise(child)
        finally:
            child.stderr.close()

    def _final(self, change: StateChange) -> StateChange:
        self.on_event(change)
        return change

    def _supervise(self, spawned: Child) -> StateChange:
        request = self.request
        start = ChildStart(
            request=request,
            allow_custom=self.allow_custom,
            allow_bpftrace=self.allow_bpftrace,
            max_duration_s=self.max_duration_s,
            max_overhead_pct=self.max_overhead_pct,
            cgroup_base=self.cgroup_base,
            features=self.capabilities.features if self.capabilities else None,
            feature_errors=self.capabilities.feature_errors if self.capabilities else {},
            kheaders=self.kheaders,
        )
        child, stderr = spawned.process, spawned.stderr
        self.child_pid = child.pid
        assert child.stdin is not None and child.stdout is not None
        lines: queue.Queue[object] = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(child.stdout, lines), daemon=True)
        reader.start()
        _send(child.stdin, start.model_dump_json())

        hard_deadline = time.monotonic() + self.compile_timeout_s
        stop_sent = killed = running = False
        final: StateChange | None = None
        why_killed = ""
        while True:
            now = time.monotonic()
            if self._cancel.is_set() and not stop_sent:
                stop_sent = True
                _send(child.stdin, "stop")
                hard_deadline = min(hard_deadline, now + request.grace_s)
            if now > hard_deadline and not killed:
                killed = True
                why_killed = "stop" if running else "compile"
                log.warning("run %s: child did not stop in time; killing it", request.run_id)
                _kill(child)
            try:
                item = lines.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is _EOF:
                break
            event = self._parse(str(item))
            if event is None:
                continue
            if isinstance(event, StateChange):
                if event.state is RunState.running:
                    running = True
                    hard_deadline = time.monotonic() + request.duration_s + request.grace_s
                    if stop_sent:
                        hard_deadline = min(hard_deadline, time.monotonic() + request.grace_s)
                if event.state.final:
                    final = event
            else:
                self.last_snapshot = event
            self.on_event(event)
        code = child.wait()
        reader.join(timeout=1)
        if final is not None:
            return final
        return self._final(self._failure(stderr, code, killed, stop_sent, why_killed))

    def _parse(self, line: str) -> RunEvent | None:
        try:
            event: RunEvent = _EVENT.validate_json(line)
        except ValidationError:
            log.warning("run %s: unreadable line from child: %.200s", self.request.run_id, line)
            return None
        return event

    def _failure(
        self, stderr: IO[bytes], code: int, killed: bool, stop_sent: bool, why_killed: str
    ) -> StateChange:
        tail = _tail(stderr)
        grace = f"the trace did not stop within {self.request.grace_s:g}s of"
        if killed and stop_sent:
            return self._killed(RunState.cancelled, f"{grace} the cancel; killed", tail)
        if killed and why_killed == "compile":
            message = f"compile and attach took over {self.compile_timeout_s:g}s; killed"
            return self._killed(RunState.failed, message, tail)
        if killed:
            message = f"{grace} its deadline; killed (results up to the last snapshot are kept)"
            return self._killed(RunState.timed_out, message, tail)
        if code < 0:
            message = f"the trace process died of signal {signal.Signals(-code).name}"
        else:
            message = f"the trace process exited with code {code} without a final state"
        if "MemoryError" in tail or "bad_alloc" in tail:
            message += f" (memory limit {self.request.limits.memory_mb} MiB)"
        error = TraceError(code=ErrorCode.internal, message=message, detail=tail)
        return StateChange(run_id=self.request.run_id, state=RunState.failed, error=error)

    def _killed(self, state: RunState, message: str, tail: str) -> StateChange:
        error = TraceError(code=ErrorCode.killed, message=message, detail=tail)
        return StateChange(run_id=self.request.run_id, state=state, error=error)


def _read_lines(stream: IO[str], out: queue.Queue[object]) -> None:
    for line in stream:
        if line.strip():
            out.put(line)
    out.put(_EOF)


def _send(stdin: IO[str], line: str) -> None:
    with contextlib.suppress(BrokenPipeError, OSError, ValueError):
        stdin.write(line + "\n")
        stdin.flush()


def _kill(child: Process) -> None:
    """SIGKILL the child's process group, unless it has exited: the zygote reaps its children
    at once, so an exited child's pid may be another process's by now."""
    if child.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)


def _tail(stderr: IO[bytes]) -> str:
    stderr.flush()
    size = stderr.seek(0, os.SEEK_END)
    stderr.seek(max(0, size - STDERR_TAIL))
    return truncate_log(stderr.read().decode("utf-8", "replace"), STDERR_TAIL)
