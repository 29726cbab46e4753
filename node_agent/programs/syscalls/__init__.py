"""syscalls: syscalls by name and process, counted in the kernel."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node_agent.programs.decode import counter_table, syscall_name, text, value
from node_agent.programs.spec import DecodeContext, Param, ProgramSpec
from node_agent.protocol import KeyField, KeyValue, Result

NR_SLOTS = 1024


def _defines(params: Mapping[str, Any]) -> dict[str, str | int]:
    return {"FT_PER_PROCESS": int(params["per_process"]), "FT_NR_SLOTS": NR_SLOTS}


def _decode(ctx: DecodeContext) -> list[Result]:
    per_process = bool(ctx.params["per_process"])
    rows: list[tuple[list[KeyValue], list[int]]] = []
    if per_process:
        for key, count in ctx.program.items("counts"):
            name = syscall_name(int(key.nr))
            rows.append(([name, int(key.tgid), text(key.comm)], [value(count)]))
    else:
        for slot, count in ctx.program.items("by_nr"):
            nr = value(slot)
            if value(count) > 0:
                name = syscall_name(nr) if nr < NR_SLOTS - 1 else "other"
                rows.append(([name], [value(count)]))
    fields = [KeyField(name="syscall")]
    if per_process:
        fields += [KeyField(name="pid", type="int"), KeyField(name="comm")]
    return [counter_table("syscalls", fields, rows, max_rows=ctx.limits.max_rows)]


SPEC = ProgramSpec(
    name="syscalls",
    summary="syscalls by name and process",
    output="counter_table",
    source_path=Path(__file__).with_name("program.c"),
    decode=_decode,
    defines=_defines,
    tracepoints=("raw_syscalls:sys_enter",),
    params=(
        Param("per_process", "bool", True, "count per process (pid, comm) as well as per syscall"),
    ),
)
