"""The runner's child process: runs one trace and writes its events as JSON lines.

stdin: first line a ChildStart; later lines are commands ("stop").
stdout: one RunEvent per line. Anything else the child or bcc prints goes to stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
import select
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import IO

from pydantic import BaseModel

from node_agent.errors import FleettraceError, PolicyViolation
from node_agent.headers.kheaders import KheadersSource, headers_for_bcc
from node_agent.headers.probe import Headers, probe_headers
from node_agent.protocol import (
    ErrorCode,
    Feature,
    RunEvent,
    RunState,
    StateChange,
    TraceError,
    TraceRequest,
)

log = logging.getLogger("node_agent.child")


class ChildStart(BaseModel):
    request: TraceRequest
    allow_custom: bool = False
    allow_bpftrace: bool = False
    max_duration_s: float = 3600.0
    max_overhead_pct: float = 400.0
    cgroup_base: str | None = None
    # The agent's last probe, which picks a program's attach option (None: the child finds out).
    features: dict[Feature, bool] | None = None
    feature_errors: dict[Feature, str] = {}
    kheaders: KheadersSource | None = None


def _limit_memory(megabytes: int) -> None:
    limit = megabytes * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _open_libbcc_lazily() -> None:
    """libbcc (with LLVM and clang) loaded with lazy binding before bcc loads it with
    RTLD_NOW: bcc then gets this handle, and a trace attaches ~15 ms sooner."""
    # Not there, or no room under the memory limit: bcc's own load reports it.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libbcc.so.0", mode=os.RTLD_LAZY)


def _headers(start: ChildStart) -> Headers:
    """The headers this trace compiles with; the kernel's own are extracted (once) here."""
    if start.kheaders is None:
        return probe_headers()
    found = probe_headers(archive=Path(start.kheaders.archive))
    return headers_for_bcc(start.kheaders, found)


def _sandbox(request: TraceRequest, headers: Headers) -> None:
    """No pinned BPF objects from here on, and for custom C no files outside system trees
    (runtime.sandbox); custom C does not run without those guards."""
    from node_agent.runtime.sandbox import (
        forbid_pinned_objects,
        read_only_beneath,
        readable_roots,
    )

    try:
        forbid_pinned_objects()
    except OSError as exc:
        if request.program == "custom":
            raise PolicyViolation(
                f"custom programs need a seccomp filter this host cannot install: {exc}"
            ) from exc
        log.warning("run %s: no seccomp filter on pinned objects: %s", request.run_id, exc)
    if request.program == "custom":
        try:
            read_only_beneath(readable_roots(extra=headers.trees))
        except OSError as exc:
            raise PolicyViolation(
                f"custom programs need Landlock (kernel 5.13+), which this host refused: {exc}"
            ) from exc


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, MemoryError) or any(
        sign in text for sign in ("failed to map segment", "Cannot allocate memory", "bad_alloc")
    )


def _watch_stdin(stdin: IO[str], stop: threading.Event) -> None:
    for line in stdin:
        if line.strip() == "stop":
            stop.set()
    stop.set()  # the parent went away: stop too, rather than trace unattended


def _warm_limit(argv: list[str]) -> int | None:
    """`--warm MB`: load bcc now, under a memory limit of MB, before the request comes."""
    if len(argv) == 2 and argv[0] == "--warm" and argv[1].isdigit():
        return int(argv[1])
    return None


def _abandoned() -> bool:
    """stdin closed with nothing in it: the runner gave up on this child before handing it a
    trace (a late zygote answer), so there is nothing to warm up for."""
    poller = select.poll()
    poller.register(0, select.POLLIN)
    events = dict(poller.poll(0)).get(0, 0)
    return bool(events & select.POLLHUP) and not events & select.POLLIN


def main(argv: list[str] | None = None) -> int:
    """`python -m node_agent.child [--warm MB]`, or a child the zygote forked (its argv)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    # Keep a private copy of stdout for events; fd 1 then points at stderr for stray output.
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def emit(event: RunEvent) -> None:
        events.write(event.model_dump_json() + "\n")
        events.flush()

    warm_mb = _warm_limit(sys.argv[1:] if argv is None else argv)
    if warm_mb is not None:
        if _abandoned():
            return 0
        _limit_memory(warm_mb)  # first: it must cover bcc's own load
        _open_libbcc_lazily()
        # A missing bcc is reported by the trace itself, with the request's run id.
        with contextlib.suppress(ImportError, OSError):
            import bcc  # noqa: F401
    line = sys.stdin.readline()
    if not line.strip():
        return 0  # the runner went away before sending the request
    start = ChildStart.model_validate_json(line)
    request = start.request
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=_watch_stdin, args=(sys.stdin, stop), daemon=True).start()
    try:
        from node_agent.trace import execute, prepare

        headers = _headers(start)  # before the sandbox: it writes under the state dir
        _sandbox(request, headers)
        # bpftrace inherits the limit (its own address space): LLVM fits in the default 2048 MiB.
        _limit_memory(request.limits.memory_mb)
        prepared = prepare(
            request,
            allow_custom=start.allow_custom,
            allow_bpftrace=start.allow_bpftrace,
            max_duration_s=start.max_duration_s,
            max_overhead_pct=start.max_overhead_pct,
            cgroup_base=start.cgroup_base,
        )
        if prepared.spec.engine == "bpftrace":
            from node_agent.bpftrace.run import run_script

            state = run_script(prepared, emit, stop, cgroup_base=start.cgroup_base)
        else:
            from node_agent.runtime.bcc_runtime import BccRuntime

            _open_libbcc_lazily()
            state = execute(
                prepared,
                BccRuntime(headers),
                emit,
                stop,
                features=start.features,
                feature_errors=start.feature_errors,
            )
    except FleettraceError as exc:
        emit(StateChange(run_id=request.run_id, state=RunState.failed, error=exc.to_error()))
        return 1
    except Exception as exc:
        if _out_of_memory(exc):
            message = f"the trace ran out of its {request.limits.memory_mb} MiB memory limit: {exc}"
            error = TraceError(code=ErrorCode.limit_exceeded, message=message)
        else:
            error = TraceError(
                code=ErrorCode.internal, message=str(exc), detail=traceback.format_exc()
            )
        emit(StateChange(run_id=request.run_id, state=RunState.failed, error=error))
        return 1
    return 0 if state in (RunState.succeeded, RunState.cancelled) else 1


if __name__ == "__main__":
    sys.exit(main())
