"""Result kinds: what a trace sends back, one module per kind.

Each module defines its wire model (with its `kind` discriminator) and a `KIND` saying how
results of that kind merge over hosts, what changed between two cumulative snapshots, and how
they print as text. To add a kind: write its module, add its model to `Result` and its KIND
to `KINDS` below, and give it a view in controller/kinds (a test checks both registries).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from node_agent.kinds import (
    counter_table,
    event_samples,
    folded_stacks,
    linear_histogram,
    log2_histogram,
)
from node_agent.kinds.base import Kind
from node_agent.kinds.counter_table import CounterTable, KeyField
from node_agent.kinds.event_samples import EventSamples
from node_agent.kinds.folded_stacks import FoldedStacks, StackCount
from node_agent.kinds.linear_histogram import LinearHistogram
from node_agent.kinds.log2_histogram import Log2Histogram

Result = Annotated[
    CounterTable | Log2Histogram | LinearHistogram | FoldedStacks | EventSamples,
    Field(discriminator="kind"),
]

KINDS: dict[str, Kind[Any]] = {
    k.key: k
    for k in (
        counter_table.KIND,
        log2_histogram.KIND,
        linear_histogram.KIND,
        folded_stacks.KIND,
        event_samples.KIND,
    )
}


def kind_of(result: Result) -> Kind[Any]:
    return KINDS[result.kind]


__all__ = [
    "KINDS",
    "CounterTable",
    "EventSamples",
    "FoldedStacks",
    "KeyField",
    "Kind",
    "LinearHistogram",
    "Log2Histogram",
    "Result",
    "StackCount",
    "kind_of",
]
