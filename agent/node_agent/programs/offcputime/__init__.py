"""offcputime: where tasks block, as user + kernel stacks weighted by microseconds off-CPU.

Output: folded stacks `offcputime` (unit usec): frames comm;user...;kernel_[k], root first,
each stack's count the total microseconds its tasks spent switched out there.
Attach options, cheapest first: tracepoint sched:sched_switch (tasks keyed by pid), then the
raw tracepoint sched_switch (keyed by task_struct pointer). The raw one formats no record, but
its stack walks cost more: with stacks, bench/attach_points.py measured it slower (a
context-switch ping-pong 1.3-1.5x the tracepoint's traced time), so it is second. Neither reads
struct task_struct, so approximate headers are enough. "Runnable" (not counted unless the
`preempted` param) is the raw tracepoint's preempt argument, or the tracepoint's prev_state.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node_agent.programs.spec import AttachOption, DecodeContext, Param, ProgramSpec
from node_agent.programs.stacks import STACK_PARAMS, folded_stacks, stack_defines
from node_agent.protocol import Result

ATTACH = (
    AttachOption.tracepoint("sched:sched_switch"),
    AttachOption.tracepoint("sched:sched_switch", raw=True),
)


def _defines(params: Mapping[str, Any]) -> dict[str, str | int]:
    return {
        **stack_defines(params),
        "FT_PREEMPTED": int(params["preempted"]),
        "FT_MIN_US": int(params["min_us"]),
    }


def _decode(ctx: DecodeContext) -> list[Result]:
    return [folded_stacks(ctx, "offcputime", "counts", "usec")]


SPEC = ProgramSpec(
    name="offcputime",
    summary="off-CPU time (blocked) by user and kernel stack per process, for flame graphs",
    output="folded_stacks",
    source_path=Path(__file__).with_name("program.c"),
    decode=_decode,
    defines=_defines,
    features=frozenset(),
    attach=ATTACH,
    scope_note="scope, process and stacks are taken as the task goes off the CPU",
    params=(
        *STACK_PARAMS,
        Param("preempted", "bool", False, "also count time preempted while still runnable"),
        Param(
            "min_us",
            "int",
            1,
            "ignore blocks shorter than this (microseconds)",
            minimum=0,
            maximum=10_000_000,
        ),
    ),
)
