"""Folded stacks on the controller: the busiest stacks with a column per host; reports keep
the stacks themselves (flame graphs); no trend metric."""

from __future__ import annotations

from collections.abc import Sequence

from controller.cli.text import Line, clip, table_lines
from controller.kinds.base import Column, View, no_metric
from controller.reports import digest as dg
from node_agent.kinds import FoldedStacks

LEAF_FRAMES = 3


def section(
    group: Sequence[FoldedStacks], columns: Sequence[Column], top: int, width: int
) -> list[Line]:
    merged = group[0]
    shown = merged.stacks[:top]
    per_host: dict[str, dict[tuple[str, ...], int]] = {}
    for column in columns:
        found = column.find(merged)
        if found is not None:
            per_host[column.host] = {tuple(s.frames): s.count for s in found.stacks}
    header = [c.header for c in columns] + ["TOTAL", "STACK"]
    rows = []
    for stack in shown:
        cells = []
        for column in columns:
            counts = per_host.get(column.host)
            cells.append("-" if counts is None else str(counts.get(tuple(stack.frames), 0)))
        rows.append([*cells, str(stack.count), short_stack(stack.frames)])
    right = [True] * (len(columns) + 1) + [False]
    body = table_lines(header, rows, right)
    room = max(40, width)
    title = f"{merged.name}: top {len(shown)} of {merged.total_rows} stacks by total {merged.unit}"
    lines = [
        Line(title, "title"),
        Line(
            f"STACK: first frame;..;{LEAF_FRAMES} leaf-most frames (--json for whole stacks)", "dim"
        ),
    ]
    lines += [Line(clip(line.text, room, keep="start"), line.style) for line in body]
    if merged.total_rows > len(shown):
        lines.append(Line(f"... {merged.total_rows - len(shown)} more stacks (--top)", "dim"))
    return lines


def short_stack(frames: Sequence[str], leaf: int = LEAF_FRAMES) -> str:
    """Root-first frames cut to the first one (the process) and the leaf-most few."""
    if len(frames) <= leaf + 1:
        return ";".join(frames)
    return ";".join([frames[0], "..", *frames[-leaf:]])


def digest(stacks: FoldedStacks, run: dg.RunDigest, details: list[dg.TableDetail]) -> None:
    run.stacks.append(stacks)


VIEW = View(section=section, digest=digest, metric=no_metric)
