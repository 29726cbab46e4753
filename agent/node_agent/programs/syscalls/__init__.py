"""syscalls: syscalls by name and process, counted in the kernel."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node_agent.programs.decode import Row, syscall_name, table_map, text, value
from node_agent.programs.spec import DecodeContext, Param, ProgramSpec
from node_agent.protocol import KeyField, Result

NR_SLOTS = 1024


def _defines(params: Mapping[str, Any]) -> dict[str, str | int]:
    return {"FT_PER_PROCESS": int(params["per_process"]), "FT_NR_SLOTS": NR_SLOTS}


PROCESS_FIELDS = [KeyField(name="syscall"), KeyField(name="pid", type="int"), KeyField(name="comm")]


def _process_row(key: Any, count: Any) -> Row:
    return [syscall_name(int(key.nr)), int(key.tgid), text(key.comm)], [value(count)]


def _syscall_row(slot: Any, count: Any) -> Row | None:
    """An array slot per syscall number, the last one for all numbers beyond."""
    nr = value(slot)
    if value(count) <= 0:
        return None
    return [syscall_name(nr) if nr < NR_SLOTS - 1 else "other"], [value(count)]


_per_process = table_map(
    "counts", lambda ctx: PROCESS_FIELDS, lambda ctx: _process_row, result="syscalls"
)
_per_syscall = table_map(
    "by_nr", lambda ctx: PROCESS_FIELDS[:1], lambda ctx: _syscall_row, result="syscalls"
)


def _decode(ctx: DecodeContext) -> list[Result]:
    decoder = _per_process if ctx.params["per_process"] else _per_syscall
    return decoder(ctx)


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
