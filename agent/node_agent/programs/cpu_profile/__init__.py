"""cpu_profile: where CPU time goes, as sampled user and kernel stacks per process."""

from __future__ import annotations

import errno
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node_agent.programs.decode import text, value
from node_agent.programs.spec import DecodeContext, Param, PerfSample, ProgramSpec
from node_agent.protocol import Feature, FoldedStacks, Result, StackCount

STACKS = "stack_traces"
MISSING_USER = "[Missing User Stack]"
MISSING_KERNEL = "[Missing Kernel Stack]"
KERNEL_SUFFIX = "_[k]"
SYMBOL_CACHE_MAX = 65536

# Decoders run once per snapshot in the same child: remember names across snapshots.
_symbols: dict[tuple[int | None, int], str] = {}


def _defines(params: Mapping[str, Any]) -> dict[str, str | int]:
    return {
        "FT_USER": int(params["user"]),
        "FT_KERNEL": int(params["kernel"]),
        "FT_IDLE": int(params["idle"]),
        "FT_STACK_ENTRIES": int(params["stack_entries"]),
    }


def _symbol(ctx: DecodeContext, addr: int, pid: int | None) -> str:
    key = (pid, addr)
    name = _symbols.get(key)
    if name is None:
        if len(_symbols) >= SYMBOL_CACHE_MAX:
            _symbols.clear()  # crude but bounded; a profile rarely has this many frames
        name = ctx.program.symbolize(addr, pid)
        _symbols[key] = name
    return name


def _missing(stack_id: int) -> bool:
    """A get_stackid error; -EFAULT just means there is no such stack (a kernel thread's user
    stack, a user-mode sample's kernel stack)."""
    return stack_id < 0 and stack_id != -errno.EFAULT


def _frames(ctx: DecodeContext, key: Any, user: bool, kernel: bool) -> tuple[str, ...]:
    frames = [text(key.comm)]
    if user:
        frames += _stack(ctx, int(key.user_stack_id), int(key.tgid), MISSING_USER, "")
    if kernel:
        frames += _stack(ctx, int(key.kernel_stack_id), None, MISSING_KERNEL, KERNEL_SUFFIX)
    return tuple(frames)


def _stack(
    ctx: DecodeContext, stack_id: int, pid: int | None, missing: str, suffix: str
) -> list[str]:
    """One stack's frames, root first (pid None: the kernel's symbols)."""
    if _missing(stack_id):
        return [missing]
    addrs = ctx.program.stack(STACKS, stack_id)
    return [_symbol(ctx, a, pid) + suffix for a in reversed(addrs)]


def _decode(ctx: DecodeContext) -> list[Result]:
    user = bool(ctx.params["user"])
    kernel = bool(ctx.params["kernel"])
    merged: dict[tuple[str, ...], int] = {}
    for key, count in ctx.program.items("counts"):
        frames = _frames(ctx, key, user, kernel)
        merged[frames] = merged.get(frames, 0) + value(count)
    ordered = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))
    limit = ctx.limits.max_rows
    stacks = [StackCount(frames=list(f), count=c) for f, c in ordered[:limit]]
    return [
        FoldedStacks(
            name="cpu_profile",
            stacks=stacks,
            total_rows=len(ordered),
            truncated=len(ordered) > limit,
        )
    ]


SPEC = ProgramSpec(
    name="cpu_profile",
    summary="sampled on-CPU stacks (user and kernel) per process, for flame graphs",
    output="folded_stacks",
    source_path=Path(__file__).with_name("program.c"),
    decode=_decode,
    defines=_defines,
    features=frozenset({Feature.perf_events}),
    perf_samples=(PerfSample(fn="on_sample", frequency_param="frequency"),),
    params=(
        Param("frequency", "int", 49, "samples per second on each CPU", minimum=1, maximum=1000),
        Param("kernel", "bool", True, "include kernel stacks"),
        Param("user", "bool", True, "include user stacks"),
        Param("idle", "bool", False, "include the idle task (pid 0)"),
        Param(
            "stack_entries",
            "int",
            16384,
            "distinct stacks the kernel can hold (about 1 KiB each)",
            minimum=256,
            maximum=131072,
        ),
    ),
)
