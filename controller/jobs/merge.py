"""The fleet view of one job: every host's results merged into one, each by its kind."""

from __future__ import annotations

from collections.abc import Sequence

from node_agent.kinds import KINDS, Result
from node_agent.kinds.counter_table import merge_tables
from node_agent.kinds.event_samples import MERGED_SAMPLES, merge_samples
from node_agent.kinds.folded_stacks import merge_stacks

__all__ = ["MERGED_SAMPLES", "merge_results", "merge_samples", "merge_stacks", "merge_tables"]


def merge_results(per_host: Sequence[tuple[str, Sequence[Result]]]) -> list[Result]:
    """Counters summed by key, histograms merged bucket by bucket, stacks summed by frames.

    Results keep the order in which their (kind, name) first appears.
    """
    groups: dict[tuple[str, str], list[tuple[str, Result]]] = {}
    for host, results in per_host:
        for result in results:
            groups.setdefault((result.kind, result.name), []).append((host, result))
    merged: list[Result] = []
    for (kind, _), items in groups.items():
        merged += KINDS[kind].merge(items)
    return merged
