"""Human output in the style of bcc's tools: aligned tables and log2 histograms with bars."""

from __future__ import annotations

import time
from collections.abc import Iterable

from node_agent.protocol import (
    CounterTable,
    EventSamples,
    FoldedStacks,
    Log2Histogram,
    Result,
    Snapshot,
)

BAR_WIDTH = 40


def slot_bounds(slot: int) -> tuple[int, int]:
    """The value range of a bcc log2 slot, as bcc's print_log2_hist shows it."""
    low = (1 << slot) >> 1
    high = (1 << slot) - 1
    if low == high:
        low -= 1
    return max(low, 0), high


def histogram_lines(hist: Log2Histogram) -> list[str]:
    if not hist.buckets:
        return [f"     {hist.unit:<19} : count     distribution", "     (no samples)"]
    counts = dict(hist.buckets)
    top = max(counts)
    first = min(s for s, c in hist.buckets if c)
    peak = max(counts.values())
    lines = [f"     {hist.unit:<19} : count     distribution"]
    for slot in range(max(first, 0), top + 1):
        low, high = slot_bounds(slot)
        count = counts.get(slot, 0)
        bar = "*" * (count * BAR_WIDTH // peak if peak else 0)
        lines.append(f"{low:>10} -> {high:<10} : {count:<8} |{bar:<{BAR_WIDTH}}|")
    return lines


def table_lines(table: CounterTable, limit: int | None = None) -> list[str]:
    header = [f.name.upper() for f in table.key_fields] + [v.upper() for v in table.value_fields]
    rows = [[str(k) for k in keys] + [str(v) for v in values] for keys, values in table.rows]
    if limit is not None:
        rows = rows[:limit]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    numeric = [f.type in ("int", "port") for f in table.key_fields] + [True] * len(
        table.value_fields
    )

    def fmt(cells: list[str]) -> str:
        out = [
            c.rjust(widths[i]) if numeric[i] else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "  ".join(out).rstrip()

    lines = [fmt(header)] + [fmt(r) for r in rows]
    if table.truncated or (limit is not None and len(table.rows) > limit):
        shown = min(len(table.rows), limit or len(table.rows))
        lines.append(f"... {table.total_rows - shown} more rows not shown")
    return lines


def samples_lines(samples: EventSamples) -> list[str]:
    header = [f.upper() for f in samples.fields]
    rows = [[_cell(v) for v in event] for event in samples.events]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(header)).rstrip()]
    lines += ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    lines.append(
        f"({len(samples.events)} most recent of {samples.seen} seen, {samples.dropped} dropped)"
    )
    return lines


def _cell(value: object) -> str:
    if isinstance(value, float):
        return time.strftime("%H:%M:%S", time.localtime(value)) + f".{int(value * 1000) % 1000:03d}"
    return str(value)


def result_lines(result: Result) -> list[str]:
    if isinstance(result, CounterTable):
        return [f"{result.name}:", *table_lines(result)]
    if isinstance(result, Log2Histogram):
        labels = ", ".join(f"{k} = {v}" for k, v in result.labels.items())
        title = f"{result.name} ({labels})" if labels else result.name
        return [f"{title}:", *histogram_lines(result)]
    if isinstance(result, FoldedStacks):
        lines = [f"{result.name} (folded, {result.unit}):", *result.folded()]
        if result.truncated:
            lines.append(f"... {result.total_rows - len(result.stacks)} more stacks not shown")
        return lines
    return [f"{result.name}:", *samples_lines(result)]


def snapshot_text(snapshot: Snapshot) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(snapshot.interval_end))
    title = "final" if snapshot.final else f"snapshot {snapshot.seq}"
    lines = [f"[{stamp}] {title} (cumulative)"]
    for result in snapshot.results:
        lines += ["", *result_lines(result)]
    stats = snapshot.stats
    notes = []
    if stats.events_lost:
        notes.append(f"{stats.events_lost} events lost")
    if stats.map_full_drops:
        notes.append(f"{stats.map_full_drops} drops on full maps (raise --map-entries)")
    if stats.rows_truncated:
        notes.append("output truncated (raise --max-rows)")
    if notes:
        lines += ["", "note: " + "; ".join(notes)]
    return "\n".join(lines)


def join_blocks(blocks: Iterable[str]) -> str:
    return "\n\n".join(blocks)
