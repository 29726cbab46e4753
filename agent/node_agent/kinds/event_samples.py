"""A bounded sample of individual events: the most recent ones, not all of them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field

from node_agent.bounds import MAX_FIELDS, MAX_SAMPLES, Count, KeyValue, Name, WireModel
from node_agent.kinds.base import Kind, name_only, unchanged

MERGED_SAMPLES = 1000


class EventSamples(WireModel):
    """A bounded sample of individual events: the most recent ones, not all of them."""

    kind: Literal["event_samples"] = "event_samples"
    name: Name
    fields: list[Name] = Field(max_length=MAX_FIELDS)
    events: list[Annotated[list[KeyValue | float], Field(max_length=MAX_FIELDS)]] = Field(
        default_factory=list, max_length=MAX_SAMPLES
    )
    seen: Count = 0
    dropped: Count = 0


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


KIND = Kind(
    model=EventSamples,
    merge=lambda items: [merge_samples(items)],
    delta=unchanged,
    text=samples_lines,
    title=lambda s: s.name,
    series=name_only,
)
