"""execs: which programs start, counted by name and path, with a sample of recent execs."""

from __future__ import annotations

import errno
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node_agent.programs.decode import Row, table_map, text, value
from node_agent.programs.spec import DecodeContext, Param, ProgramSpec, SampleSpec
from node_agent.protocol import KeyField, KeyValue, Result


def _defines(params: Mapping[str, Any]) -> dict[str, str | int]:
    return {"FT_SAMPLES": int(params["samples"]), "FT_FAILURES": int(params["failures"])}


def errno_name(err: int) -> str:
    return errno.errorcode.get(err, f"errno_{err}")


FIELDS = [KeyField(name="comm"), KeyField(name="filename", type="path")]
FAILED_FIELDS = [*FIELDS, KeyField(name="error")]


def _exec_row(key: Any, count: Any) -> Row:
    return [text(key.comm), text(key.filename)], [value(count)]


def _failure_row(key: Any, count: Any) -> Row:
    return [text(key.comm), text(key.filename), errno_name(int(key.err))], [value(count)]


_execs = table_map("execs", lambda ctx: FIELDS, lambda ctx: _exec_row)
_failures = table_map("exec_failures", lambda ctx: FAILED_FIELDS, lambda ctx: _failure_row)


def _decode(ctx: DecodeContext) -> list[Result]:
    return _execs(ctx) + (_failures(ctx) if ctx.params["failures"] else [])


def _sample_row(event: Any) -> list[KeyValue | float]:
    # bpf_ktime_get_ns() is CLOCK_MONOTONIC: shift it onto the wall clock.
    wall = time.time() - time.monotonic() + int(event.ts_ns) / 1e9
    return [
        round(wall, 6),
        int(event.pid),
        int(event.uid),
        text(event.comm),
        text(event.filename),
    ]


SPEC = ProgramSpec(
    name="execs",
    summary="which programs start: execs by name and path, with recent ones sampled",
    output="counter_table",
    source_path=Path(__file__).with_name("program.c"),
    decode=_decode,
    defines=_defines,
    tracepoints=(
        "sched:sched_process_exec",
        "syscalls:sys_enter_execve",
        "syscalls:sys_exit_execve",
        "syscalls:sys_enter_execveat",
        "syscalls:sys_exit_execveat",
    ),
    params=(
        Param("samples", "bool", True, "send each exec to the bounded sample of recent execs"),
        Param(
            "failures",
            "bool",
            False,
            "also count failed execve/execveat calls by error (a PATH search fails a lot)",
        ),
    ),
    samples=SampleSpec(
        table="exec_events",
        fields=("time", "pid", "uid", "comm", "filename"),
        row=_sample_row,
        name="recent_execs",
    ),
    scope_note=(
        "a successful exec is matched after it (comm is the new program's name);"
        " a failed one is matched on the calling process"
    ),
)
