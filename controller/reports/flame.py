"""Flame graph layout from folded stacks, and a host-vs-fleet differential, computed in Python.

Linear in the number of frames: each box knows its parent's index, never its whole path (paths
made an 8,000-frame stack cost 8,000² references), and stacks deeper than MAX_DEPTH are cut.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from node_agent.protocol import FoldedStacks

MIN_SHARE = 0.001
# Deeper than any real call chain worth reading; a box row per frame beyond is a page of pixels.
MAX_DEPTH = 512


@dataclass
class _Node:
    count: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


@dataclass(frozen=True)
class Frame:
    """One box: `start` and `count` are in samples, so widths are proportional to counts.

    `parent` is the index of the caller's box in the layout (-1 at the root row); `delta` is
    set in a differential: the host's share of its samples here minus the fleet's share.
    """

    name: str
    depth: int
    start: int
    count: int
    parent: int = -1
    delta: float | None = None


@dataclass(frozen=True)
class Layout:
    total: int
    frames: list[Frame]
    cut: int = 0  # stacks deeper than the depth cap, drawn cut at it

    def path(self, index: int) -> tuple[str, ...]:
        """A box's frames from the root (for tests and tooltips; O(depth))."""
        names: list[str] = []
        while index >= 0:
            names.append(self.frames[index].name)
            index = self.frames[index].parent
        return tuple(reversed(names))


def _tree(stacks: Iterable[FoldedStacks], max_depth: int) -> tuple[_Node, int]:
    root, cut = _Node(), 0
    for fs in stacks:
        for stack in fs.stacks:
            if stack.count <= 0:
                continue
            if len(stack.frames) > max_depth:
                cut += 1
            root.count += stack.count
            node = root
            for name in stack.frames[:max_depth]:
                node = node.children.setdefault(name, _Node())
                node.count += stack.count
    return root, cut


def layout(
    stacks: Iterable[FoldedStacks],
    min_share: float = MIN_SHARE,
    *,
    baseline: Iterable[FoldedStacks] | None = None,
    max_depth: int = MAX_DEPTH,
) -> Layout:
    """Boxes in icicle order (pre-order); children sorted by name, left to right.

    Frames narrower than `min_share` of the total are dropped with everything under them. With
    a `baseline` (the fleet), each box also gets its `delta` against the same path there.
    """
    root, cut = _tree(stacks, max_depth)
    total = root.count
    frames: list[Frame] = []
    if total == 0:
        return Layout(0, frames, cut)
    base = _tree(baseline, max_depth)[0] if baseline is not None else None
    # Iterative pre-order DFS (real stacks are deeper than Python's recursion limit): a box is
    # appended when popped, so its children, pushed next, know its index.
    todo: list[tuple[str, _Node, _Node | None, int, int, int]] = [("", root, base, 0, -1, -1)]
    while todo:
        name, node, twin, start, depth, parent = todo.pop()
        here = parent
        if depth >= 0:
            frames.append(
                Frame(name, depth, start, node.count, parent, _delta(node, twin, total, base))
            )
            here = len(frames) - 1
        offset = start
        below = []
        for child_name in sorted(node.children):
            child = node.children[child_name]
            if child.count / total >= min_share:
                child_twin = twin.children.get(child_name) if twin is not None else None
                below.append((child_name, child, child_twin, offset, depth + 1, here))
            offset += child.count
        todo.extend(reversed(below))
    return Layout(total, frames, cut)


def _delta(node: _Node, twin: _Node | None, total: int, base: _Node | None) -> float | None:
    if base is None:
        return None
    fleet = twin.count / base.count if twin is not None and base.count else 0.0
    return node.count / total - fleet
