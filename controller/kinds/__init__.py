"""What the controller does with each result kind (node_agent/kinds has the models and the
agent's side): one module per kind, registered here under the kind's key. The histogram
view serves every histogram kind: their scale is what differs."""

from __future__ import annotations

from typing import Any

from controller.kinds import counter_table, event_samples, folded_stacks, histogram
from controller.kinds.base import Answer, Column, View
from node_agent.kinds import Result

VIEWS: dict[str, View[Any]] = {
    "counter_table": counter_table.VIEW,
    "log2_histogram": histogram.VIEW,
    "linear_histogram": histogram.VIEW,
    "folded_stacks": folded_stacks.VIEW,
    "event_samples": event_samples.VIEW,
}


def view_of(result: Result) -> View[Any]:
    return VIEWS[result.kind]


__all__ = ["VIEWS", "Answer", "Column", "View", "view_of"]
