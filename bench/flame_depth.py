"""Flame graph memory against stack depth: the layout now against the path-keeping one it
replaced (kept below as the baseline), in the same run, by tracemalloc peak.

    .venv/bin/python bench/flame_depth.py            # ~40 s (tracemalloc is slow)
    .venv/bin/python bench/flame_depth.py --json

Each case lays out one job's worth of deep stacks (a few stacks sharing a root, as a recursive
workload gives) and draws the SVG. `now_uncapped` lifts the depth cap, to show the layout
itself is linear; `now` is what a report does (cut at MAX_DEPTH, with a note).
"""

from __future__ import annotations

import sys
import tracemalloc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import _main

from controller.reports import svg
from controller.reports.flame import MAX_DEPTH, layout
from node_agent.protocol import FoldedStacks, StackCount

DEPTHS = (1000, 2000, 4000, 8000)
STACKS = 4  # stacks per case, sharing their first half


@dataclass
class _OldNode:
    count: int = 0
    children: dict[str, _OldNode] = field(default_factory=dict)


def old_layout(stacks: Iterable[FoldedStacks]) -> int:
    """The layout before issue 12: every box held its whole path (a tuple per box)."""
    root = _OldNode()
    for fs in stacks:
        for stack in fs.stacks:
            root.count += stack.count
            node = root
            for name in stack.frames:
                node = node.children.setdefault(name, _OldNode())
                node.count += stack.count
    frames: list[tuple[tuple[str, ...], int, int, int]] = []
    todo: list[tuple[tuple[str, ...], _OldNode, int]] = [((), root, 0)]
    while todo:
        path, node, start = todo.pop()
        if path:
            frames.append((path, len(path) - 1, start, node.count))
        offset = start
        below = []
        for name in sorted(node.children):
            below.append(((*path, name), node.children[name], offset))
            offset += node.children[name].count
        todo.extend(reversed(below))
    return len(frames)


def deep_stacks(depth: int) -> list[FoldedStacks]:
    shared = [f"recurse_{i}" for i in range(depth // 2)]
    stacks = [
        StackCount(frames=[*shared, *(f"leaf{s}_{i}" for i in range(depth - depth // 2))], count=10)
        for s in range(STACKS)
    ]
    return [FoldedStacks(name="stacks", stacks=stacks)]


def peak_mb(run: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def measure(depth: int) -> dict[str, float]:
    stacks = deep_stacks(depth)
    return {
        "depth": depth,
        "baseline_mb": peak_mb(lambda: old_layout(stacks)),
        "now_uncapped_mb": peak_mb(lambda: svg.flame(layout(stacks, max_depth=depth), "flame")),
        "now_mb": peak_mb(lambda: svg.flame(layout(stacks), "flame")),
    }


def main() -> int:
    args = _main.options(__doc__).parse_args()
    rows = []
    for depth in DEPTHS:
        rows.append(measure(depth))
        sys.stderr.write(f"depth {depth}: done\n")
    return _main.finish(args, {"max_depth": MAX_DEPTH, "rows": rows}, print_table)


def print_table(summary: dict[str, Any]) -> None:
    rows = summary["rows"]
    sys.stdout.write(
        f"{'depth':>6} {'baseline MB':>12} {'now, uncapped MB':>17} {'ratio':>6} {'now MB':>7}\n"
    )
    for r in rows:
        ratio = r["baseline_mb"] / r["now_uncapped_mb"]
        sys.stdout.write(
            f"{r['depth']:>6} {r['baseline_mb']:>12.1f} {r['now_uncapped_mb']:>17.1f} "
            f"{ratio:>6.1f} {r['now_mb']:>7.1f}\n"
        )


if __name__ == "__main__":
    sys.exit(main())
