"""opens: which files are opened, by process and path, with failed opens counted apart.

Paths are as the caller passed them (a relative one is relative to its directory or dfd),
cut at 255 bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from node_agent.programs.decode import Row, table_map, text
from node_agent.programs.spec import DecodeContext, Param, ProgramSpec
from node_agent.protocol import KeyField


def _defines(params: Mapping[str, Any]) -> dict[str, str | int]:
    return {
        "FT_PER_PROCESS": int(params["per_process"]),
        "FT_FAILED_ONLY": int(params["failed_only"]),
    }


def _fields(ctx: DecodeContext) -> list[KeyField]:
    path = KeyField(name="path", type="path")
    if ctx.params["per_process"]:
        return [KeyField(name="pid", type="int"), KeyField(name="comm"), path]
    return [path]


def _process_row(key: Any, val: Any) -> Row:
    return [int(key.tgid), text(key.comm), text(key.path)], [int(val.count), int(val.errors)]


def _path_row(key: Any, val: Any) -> Row:
    return [text(key.path)], [int(val.count), int(val.errors)]


def _row(ctx: DecodeContext) -> Callable[[Any, Any], Row]:
    return _process_row if ctx.params["per_process"] else _path_row


SPEC = ProgramSpec(
    name="opens",
    summary="which files are opened, by process and path (openat, openat2), with errors",
    output="counter_table",
    source_path=Path(__file__).with_name("program.c"),
    decode=table_map("opens", _fields, _row, value_fields=("count", "errors")),
    defines=_defines,
    # openat2 exists from Linux 5.6; the legacy open(2) and creat(2) (x86 only) are not counted.
    tracepoints=(
        "syscalls:sys_enter_openat",
        "syscalls:sys_exit_openat",
        "syscalls:sys_enter_openat2",
        "syscalls:sys_exit_openat2",
    ),
    params=(
        Param("per_process", "bool", True, "count per process (pid, comm) as well as per path"),
        Param("failed_only", "bool", False, "count only opens that failed"),
    ),
)
