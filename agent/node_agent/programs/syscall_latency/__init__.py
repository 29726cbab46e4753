"""syscall_latency: time from syscall entry to exit, as a log2 histogram per syscall."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from node_agent.errors import BadParameter, UnsupportedProgram
from node_agent.programs.decode import histogram_map, syscall_name
from node_agent.programs.spec import Param, ProgramSpec
from node_agent.protocol import KeyValue

NS_PER_UNIT = {"nsec": 1, "usec": 1_000}
NO_RETURN = ("exit", "exit_group")  # never reach sys_exit: nothing to time


@cache
def syscall_numbers() -> dict[str, int]:
    """This machine's syscall table (name -> number), from bcc."""
    try:
        from bcc.syscall import syscalls
    except Exception as exc:  # prepare() may run where bcc is absent: say what is missing
        raise UnsupportedProgram("syscall_latency needs bcc's syscall table") from exc
    table: Mapping[int, bytes] = syscalls
    return {name.decode(): nr for nr, name in table.items()}


def _defines(params: Mapping[str, Any]) -> dict[str, str | int]:
    numbers = syscall_numbers()
    defines: dict[str, str | int] = {"FT_UNIT_DIV": NS_PER_UNIT[params["unit"]]}
    for name, macro in zip(NO_RETURN, ("FT_NR_EXIT", "FT_NR_EXIT_GROUP"), strict=True):
        if name in numbers:
            defines[macro] = numbers[name]
    wanted = str(params["syscall"]).strip()
    if wanted:
        if wanted in NO_RETURN:
            raise BadParameter("params.syscall", f"{wanted} never returns, so it has no latency")
        if wanted not in numbers:
            raise BadParameter("params.syscall", f"unknown syscall {wanted!r} on this machine")
        defines["FT_SYSCALL_NR"] = numbers[wanted]
    return defines


def labels_of(key: Any) -> dict[str, KeyValue]:
    return {"syscall": syscall_name(int(key.nr))}


SPEC = ProgramSpec(
    name="syscall_latency",
    summary="syscall latency (entry to exit) per syscall",
    output="log2_histogram",
    source_path=Path(__file__).with_name("program.c"),
    decode=histogram_map("latency", lambda ctx: labels_of, result="syscall_latency"),
    defines=_defines,
    tracepoints=("raw_syscalls:sys_enter", "raw_syscalls:sys_exit"),
    params=(
        Param("unit", "str", "usec", "histogram unit", choices=("nsec", "usec")),
        Param("syscall", "str", "", "only this syscall, by name (empty: all)"),
    ),
)
