"""Stack-count maps (a key with tgid, comm and stack ids) as folded stacks, symbolized."""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Any

from node_agent.programs.decode import text, value
from node_agent.programs.spec import DecodeContext, Param
from node_agent.protocol import FoldedStacks, StackCount

STACKS = "stack_traces"
MISSING_USER = "[Missing User Stack]"
MISSING_KERNEL = "[Missing Kernel Stack]"
KERNEL_SUFFIX = "_[k]"
SYMBOL_CACHE_MAX = 65536

# The parameters every stack program takes, and their -D flags.
STACK_PARAMS = (
    Param("kernel", "bool", True, "include kernel stacks"),
    Param("user", "bool", True, "include user stacks"),
    Param(
        "stack_entries",
        "int",
        16384,
        "distinct stacks the kernel can hold (about 1 KiB each)",
        minimum=256,
        maximum=131072,
    ),
)


def stack_defines(params: Mapping[str, Any]) -> dict[str, str | int]:
    return {
        "FT_USER": int(params["user"]),
        "FT_KERNEL": int(params["kernel"]),
        "FT_STACK_ENTRIES": int(params["stack_entries"]),
    }


# Decoders run once per snapshot in the same child: remember names across snapshots.
_symbols: dict[tuple[int | None, int], str] = {}


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


def folded_stacks(ctx: DecodeContext, name: str, counts: str, unit: str) -> FoldedStacks:
    """The `counts` map (stack key -> weight) as folded stacks, heaviest first; the `user`
    and `kernel` params say which stacks were collected."""
    user = bool(ctx.params["user"])
    kernel = bool(ctx.params["kernel"])
    merged: dict[tuple[str, ...], int] = {}
    for key, count in ctx.program.items(counts):
        frames = _frames(ctx, key, user, kernel)
        merged[frames] = merged.get(frames, 0) + value(count)
    ordered = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))
    limit = ctx.limits.max_rows
    return FoldedStacks(
        name=name,
        unit=unit,
        stacks=[StackCount(frames=list(f), count=c) for f, c in ordered[:limit]],
        total_rows=len(ordered),
        truncated=len(ordered) > limit,
    )
