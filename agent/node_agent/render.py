"""Human output in the style of bcc's tools: each result as its kind prints it, in a snapshot."""

from __future__ import annotations

import time
from collections.abc import Iterable

from node_agent.kinds import kind_of
from node_agent.kinds.counter_table import table_lines
from node_agent.kinds.event_samples import samples_lines
from node_agent.kinds.histogram import BAR_WIDTH, histogram_lines
from node_agent.notes import stats_notes
from node_agent.protocol import Result, Snapshot

__all__ = [
    "BAR_WIDTH",
    "histogram_lines",
    "join_blocks",
    "result_lines",
    "samples_lines",
    "snapshot_text",
    "table_lines",
]


def result_lines(result: Result) -> list[str]:
    kind = kind_of(result)
    return [f"{kind.title(result)}:", *kind.text(result)]


def snapshot_text(snapshot: Snapshot) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(snapshot.interval_end))
    title = "final" if snapshot.final else f"snapshot {snapshot.seq}"
    lines = [f"[{stamp}] {title} (cumulative)"]
    for result in snapshot.results:
        lines += ["", *result_lines(result)]
    notes = stats_notes(snapshot.stats)
    if notes:
        lines += ["", "note: " + "; ".join(notes)]
    if snapshot.stats.attach:
        lines += ["", f"attached by {snapshot.stats.attach}"]
    return "\n".join(lines)


def join_blocks(blocks: Iterable[str]) -> str:
    return "\n\n".join(blocks)
