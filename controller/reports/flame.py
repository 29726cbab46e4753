"""Flame graph layout from folded stacks, and a host-vs-fleet differential, computed in Python."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from node_agent.protocol import FoldedStacks

MIN_SHARE = 0.001
Path = tuple[str, ...]


@dataclass
class _Node:
    count: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


@dataclass(frozen=True)
class Frame:
    """One box: `start` and `count` are in samples, so widths are proportional to counts."""

    path: Path
    depth: int
    start: int
    count: int

    @property
    def name(self) -> str:
        return self.path[-1]


def _tree(stacks: Iterable[FoldedStacks]) -> _Node:
    root = _Node()
    for fs in stacks:
        for stack in fs.stacks:
            if stack.count <= 0:
                continue
            root.count += stack.count
            node = root
            for name in stack.frames:
                node = node.children.setdefault(name, _Node())
                node.count += stack.count
    return root


def layout(stacks: Iterable[FoldedStacks], min_share: float = MIN_SHARE) -> tuple[int, list[Frame]]:
    """(total samples, frames) in icicle order; children sorted by name, left to right.

    Frames narrower than `min_share` of the total are dropped with everything under them.
    """
    root = _tree(stacks)
    total = root.count
    frames: list[Frame] = []
    if total == 0:
        return 0, frames
    # Iterative pre-order DFS: real stacks can be deeper than Python's recursion limit.
    todo: list[tuple[Path, _Node, int]] = [((), root, 0)]
    while todo:
        path, node, start = todo.pop()
        if path:
            frames.append(Frame(path, len(path) - 1, start, node.count))
        offset = start
        below: list[tuple[Path, _Node, int]] = []
        for name in sorted(node.children):
            child = node.children[name]
            if child.count / total >= min_share:
                below.append(((*path, name), child, offset))
            offset += child.count
        todo.extend(reversed(below))
    return total, frames


def path_counts(stacks: Iterable[FoldedStacks]) -> tuple[int, dict[Path, int]]:
    """(total, inclusive samples of every stack prefix)."""
    total = 0
    counts: dict[Path, int] = {}
    for fs in stacks:
        for stack in fs.stacks:
            if stack.count <= 0:
                continue
            total += stack.count
            for i in range(1, len(stack.frames) + 1):
                prefix = tuple(stack.frames[:i])
                counts[prefix] = counts.get(prefix, 0) + stack.count
    return total, counts


def differential(
    host_total: int, host_frames: Iterable[Frame], fleet_total: int, fleet: Mapping[Path, int]
) -> dict[Path, float]:
    """Per host frame: its share of the host's samples minus the same path's share in the fleet.

    Positive (drawn red): the host spends more of its time there than the fleet does.
    """
    if host_total == 0:
        return {}
    return {
        f.path: f.count / host_total - (fleet.get(f.path, 0) / fleet_total if fleet_total else 0.0)
        for f in host_frames
    }
