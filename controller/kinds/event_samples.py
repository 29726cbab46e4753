"""Event samples on the controller: the most recent events of all hosts; reports and trends
do not read them."""

from __future__ import annotations

from collections.abc import Sequence

from controller.cli.text import Line
from controller.kinds.base import Column, View, no_digest, no_metric
from node_agent.kinds import EventSamples
from node_agent.kinds.event_samples import samples_lines


def section(
    group: Sequence[EventSamples], columns: Sequence[Column], top: int, width: int
) -> list[Line]:
    merged = group[0]
    recent = merged.model_copy(update={"events": merged.events[-top:]})
    head, *rest = samples_lines(recent)
    return [
        Line(f"{merged.name}: recent events from all hosts, oldest first", "title"),
        Line(head, "header"),
        *(Line(text) for text in rest[:-1]),
        Line(rest[-1], "dim"),
    ]


VIEW = View(section=section, digest=no_digest, metric=no_metric)
