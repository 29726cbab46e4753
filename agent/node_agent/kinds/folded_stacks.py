"""Sampled stacks, root first, in the folded format flame graphs read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from node_agent.bounds import MAX_ROWS, MAX_STACK_DEPTH, Count, Name, Text, WireModel
from node_agent.kinds.base import Kind, name_only, unchanged


class StackCount(WireModel):
    frames: list[Text] = Field(description="root first", max_length=MAX_STACK_DEPTH)
    count: Count


class FoldedStacks(WireModel):
    """Sampled stacks, root first, in the folded format flame graphs read."""

    kind: Literal["folded_stacks"] = "folded_stacks"
    name: Name
    unit: Name = "samples"
    stacks: list[StackCount] = Field(default_factory=list, max_length=MAX_ROWS)
    total_rows: Count = 0
    truncated: bool = False

    def folded(self) -> list[str]:
        return [f"{';'.join(s.frames)} {s.count}" for s in self.stacks]


def merge_stacks(all_stacks: Sequence[FoldedStacks]) -> FoldedStacks:
    """Counts summed by frames, largest first."""
    sums: dict[tuple[str, ...], int] = {}
    for stacks in all_stacks:
        for stack in stacks.stacks:
            frames = tuple(stack.frames)
            sums[frames] = sums.get(frames, 0) + stack.count
    ordered = sorted(sums.items(), key=lambda kv: (-kv[1], kv[0]))
    return FoldedStacks(
        name=all_stacks[0].name,
        unit=all_stacks[0].unit,
        stacks=[StackCount(frames=list(f), count=c) for f, c in ordered],
        total_rows=len(ordered),
        truncated=any(s.truncated for s in all_stacks),
    )


def stacks_lines(stacks: FoldedStacks) -> list[str]:
    lines = stacks.folded()
    if stacks.truncated:
        lines.append(f"... {stacks.total_rows - len(stacks.stacks)} more stacks not shown")
    return lines


KIND = Kind(
    model=FoldedStacks,
    merge=lambda items: [merge_stacks([s for _, s in items])],
    delta=unchanged,
    text=stacks_lines,
    title=lambda s: f"{s.name} (folded, {s.unit})",
    series=name_only,
)
