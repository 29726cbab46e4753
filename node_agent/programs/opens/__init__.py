"""opens: which files are opened, by process and path, with failed opens counted apart.

Paths are as the caller passed them (a relative one is relative to its directory or dfd),
cut at 255 bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node_agent.programs.decode import counter_table, text
from node_agent.programs.spec import DecodeContext, Param, ProgramSpec
from node_agent.protocol import KeyField, KeyValue, Result


def _defines(params: Mapping[str, Any]) -> dict[str, str | int]:
    return {
        "FT_PER_PROCESS": int(params["per_process"]),
        "FT_FAILED_ONLY": int(params["failed_only"]),
    }


def _decode(ctx: DecodeContext) -> list[Result]:
    per_process = bool(ctx.params["per_process"])
    rows: list[tuple[list[KeyValue], list[int]]] = []
    for key, val in ctx.program.items("opens"):
        path = text(key.path)
        counts = [int(val.count), int(val.errors)]
        if per_process:
            rows.append(([int(key.tgid), text(key.comm), path], counts))
        else:
            rows.append(([path], counts))
    fields = [KeyField(name="path", type="path")]
    if per_process:
        fields = [KeyField(name="pid", type="int"), KeyField(name="comm"), *fields]
    return [
        counter_table(
            "opens", fields, rows, max_rows=ctx.limits.max_rows, value_fields=("count", "errors")
        )
    ]


SPEC = ProgramSpec(
    name="opens",
    summary="which files are opened, by process and path (openat, openat2), with errors",
    output="counter_table",
    source_path=Path(__file__).with_name("program.c"),
    decode=_decode,
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
