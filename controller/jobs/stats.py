"""Numbers from histograms (count, percentiles, highest bucket) for views and reports.

Percentiles are bucket upper bounds: a bucketed histogram cannot say more than "at most this".
The math is the histogram kinds' (node_agent/kinds/histogram.py); log2 is the default scale.
"""

from __future__ import annotations

from collections.abc import Sequence

from node_agent.kinds import histogram
from node_agent.kinds.histogram import DEFAULT_PERCENTILES, Buckets, Scale, nonempty
from node_agent.kinds.log2_histogram import LOG2

HistogramSummary = histogram.Summary


def percentile(buckets: Buckets, p: float, scale: Scale = LOG2) -> int | None:
    """The upper bound of the bucket where the cumulative count reaches rank ceil(p% of n).

    None for an empty histogram.
    """
    items = nonempty(buckets)
    return histogram.percentiles(items, sum(count for _, count in items), (p,), scale)[p]


def max_slot(buckets: Buckets) -> int | None:
    """The highest non-empty slot, or None for an empty histogram."""
    items = nonempty(buckets)
    return items[-1][0] if items else None


def summarize(
    buckets: Buckets, percentiles: Sequence[float] = DEFAULT_PERCENTILES, scale: Scale = LOG2
) -> HistogramSummary:
    return histogram.summarize(buckets, scale, percentiles)
