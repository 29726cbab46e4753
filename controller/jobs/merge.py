"""The fleet view of one job: every host's results merged into one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from node_agent.protocol import (
    CounterTable,
    EventSamples,
    FoldedStacks,
    KeyValue,
    Log2Histogram,
    Result,
    StackCount,
)

MERGED_SAMPLES = 1000


def merge_results(per_host: Sequence[tuple[str, Sequence[Result]]]) -> list[Result]:
    """Counters summed by key, histograms merged bucket by bucket, stacks summed by frames.

    Results keep the order in which their (kind, name) first appears.
    """
    order: list[tuple[str, str]] = []
    groups: dict[tuple[str, str], list[tuple[str, Result]]] = {}
    for host, results in per_host:
        for result in results:
            key: tuple[str, str] = (result.kind, result.name)
            if key not in groups:
                order.append(key)
                groups[key] = []
            groups[key].append((host, result))
    merged: list[Result] = []
    for key in order:
        items = groups[key]
        kind = key[0]
        if kind == "counter_table":
            merged.append(merge_tables([r for _, r in items if isinstance(r, CounterTable)]))
        elif kind == "log2_histogram":
            merged += merge_histograms(r for _, r in items if isinstance(r, Log2Histogram))
        elif kind == "folded_stacks":
            merged.append(merge_stacks([r for _, r in items if isinstance(r, FoldedStacks)]))
        else:
            merged.append(merge_samples([(h, r) for h, r in items if isinstance(r, EventSamples)]))
    return merged


def merge_tables(tables: Sequence[CounterTable]) -> CounterTable:
    first = tables[0]
    sums: dict[tuple[KeyValue, ...], list[int]] = {}
    for table in tables:
        for keys, values in table.rows:
            have = sums.setdefault(tuple(keys), [0] * len(values))
            for i, v in enumerate(values):
                have[i] += v
    rows = sorted(sums.items(), key=lambda kv: (-kv[1][0], [str(k) for k in kv[0]]))
    return CounterTable(
        name=first.name,
        key_fields=first.key_fields,
        value_fields=first.value_fields,
        rows=[(list(k), v) for k, v in rows],
        total_rows=len(rows),
        truncated=any(t.truncated for t in tables),
    )


def merge_histograms(hists: Iterable[Log2Histogram]) -> list[Log2Histogram]:
    by_labels: dict[tuple[tuple[str, KeyValue], ...], tuple[Log2Histogram, dict[int, int]]] = {}
    for hist in hists:
        labels = tuple(sorted(hist.labels.items()))
        _, buckets = by_labels.setdefault(labels, (hist, {}))
        for slot, count in hist.buckets:
            buckets[slot] = buckets.get(slot, 0) + count
    out = [
        Log2Histogram(
            name=first.name, unit=first.unit, labels=dict(labels), buckets=sorted(b.items())
        )
        for labels, (first, b) in by_labels.items()
    ]
    out.sort(key=lambda h: -h.total)
    return out


def merge_stacks(all_stacks: Sequence[FoldedStacks]) -> FoldedStacks:
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


def merge_samples(items: Sequence[tuple[str, EventSamples]]) -> EventSamples:
    """Events from every host, with a leading host column, newest last, bounded."""
    first = items[0][1]
    events: list[list[KeyValue | float]] = []
    for host, samples in items:
        events += [[host, *event] for event in samples.events]
    if "time" in first.fields:
        index = first.fields.index("time") + 1
        events.sort(key=lambda e: float(e[index]) if isinstance(e[index], int | float) else 0.0)
    return EventSamples(
        name=first.name,
        fields=["host", *first.fields],
        events=events[-MERGED_SAMPLES:],
        seen=sum(s.seen for _, s in items),
        dropped=sum(s.dropped for _, s in items) + max(0, len(events) - MERGED_SAMPLES),
    )
