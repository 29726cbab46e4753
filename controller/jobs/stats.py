"""Numbers from log2 histograms (count, percentiles, highest bucket) for views and reports.

Percentiles are bucket upper bounds: a log2 histogram cannot say more than "at most this".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from node_agent.render import slot_bounds

Buckets = Iterable[tuple[int, int]]
DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)


def _nonempty(buckets: Buckets) -> list[tuple[int, int]]:
    return sorted((slot, count) for slot, count in buckets if count > 0)


def percentile(buckets: Buckets, p: float) -> int | None:
    """The upper bound of the bucket where the cumulative count reaches rank ceil(p% of n).

    None for an empty histogram.
    """
    items = _nonempty(buckets)
    return _percentiles(items, sum(count for _, count in items), (p,))[p]


@lru_cache(maxsize=256)
def _exact(p: float) -> Fraction:
    """p as the decimal it was written as: 99.9% of 1000 must be rank 999, not 1000 through a
    float error."""
    if not 0 < p <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {p}")
    return Fraction(str(p))


def _percentiles(
    items: Sequence[tuple[int, int]], n: int, ps: Sequence[float]
) -> dict[float, int | None]:
    """Several percentiles of sorted non-empty buckets holding n values, in one pass."""
    ranks = sorted((max(1, math.ceil(_exact(p) * n / 100)), p) for p in ps)
    found: dict[float, int | None] = dict.fromkeys(ps)
    if n == 0:
        return found
    seen, i = 0, 0
    for slot, count in items:
        seen += count
        while i < len(ranks) and seen >= ranks[i][0]:
            found[ranks[i][1]] = slot_bounds(slot)[1]
            i += 1
        if i == len(ranks):
            return found
    raise AssertionError("unreachable: the last bucket reaches every rank")


def max_slot(buckets: Buckets) -> int | None:
    """The highest non-empty slot, or None for an empty histogram."""
    items = _nonempty(buckets)
    return items[-1][0] if items else None


@dataclass(frozen=True)
class HistogramSummary:
    count: int
    percentiles: dict[float, int | None]
    max_slot: int | None

    @property
    def max_bounds(self) -> tuple[int, int] | None:
        return slot_bounds(self.max_slot) if self.max_slot is not None else None


def summarize(
    buckets: Buckets, percentiles: Sequence[float] = DEFAULT_PERCENTILES
) -> HistogramSummary:
    items = _nonempty(buckets)
    n = sum(count for _, count in items)
    return HistogramSummary(
        count=n,
        percentiles=_percentiles(items, n, percentiles),
        max_slot=items[-1][0] if items else None,
    )
