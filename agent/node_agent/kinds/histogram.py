"""What log2 and linear histograms share, written once: sparse (slot, count) buckets over a
scale that says which values each slot holds. Merge, delta, percentiles and bcc-style text
live here; a histogram kind brings its model and its scale.

Percentiles are bucket upper bounds: a bucketed histogram cannot say more than "at most this".
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol, TypeVar

from node_agent.bounds import KeyValue, WireModel
from node_agent.kinds.base import Kind

BAR_WIDTH = 40
LABEL_WIDTH = 24  # "{low:>10} -> {high:<10}": the header's "unit : count" lines up with it
DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)
Buckets = Iterable[tuple[int, int]]
LabelSet = tuple[tuple[str, KeyValue], ...]


class Scale(Protocol):
    """Which values each slot of a histogram holds."""

    def bounds(self, slot: int) -> tuple[int | None, int | None]:
        """The slot's values, both ends included; None where the slot is open."""
        ...

    def upper(self, slot: int) -> int:
        """What a percentile falling in this slot is reported as."""
        ...

    def label(self, slot: int) -> str:
        """The slot as a text histogram's row names it."""
        ...

    def spec(self) -> dict[str, int] | None:
        """What a stored digest keeps to rebuild the scale (None: log2, the default)."""
        ...


class BucketHistogram(WireModel):
    """The histogram kinds' base: each declares its own fields (name, unit, labels, buckets)
    and says what its slots mean."""

    if TYPE_CHECKING:
        kind: str
        name: str
        unit: str
        labels: dict[str, KeyValue]
        buckets: list[tuple[int, int]]

    @property
    def scale(self) -> Scale:
        raise NotImplementedError

    @property
    def total(self) -> int:
        return sum(c for _, c in self.buckets)


H = TypeVar("H", bound=BucketHistogram)


class IncompatibleHistograms(ValueError):
    """Two histograms whose slots mean different values cannot be added bucket by bucket."""


def label_set(hist: BucketHistogram) -> LabelSet:
    return tuple(sorted(hist.labels.items()))


def series(hist: BucketHistogram) -> Hashable:
    """A series is a name, a label set and a scale: other bounds are another series."""
    return hist.name, label_set(hist), hist.scale


def combine(hists: Sequence[H]) -> H:
    """One histogram holding all of them, the first one's name and labels; refused when their
    scales differ (a slot would add values of other ranges)."""
    first = hists[0]
    sums: dict[int, int] = {}
    for hist in hists:
        if hist.scale != first.scale:
            raise IncompatibleHistograms(
                f"histogram {first.name}: cannot add {hist.scale} buckets to {first.scale} ones"
            )
        for slot, count in hist.buckets:
            sums[slot] = sums.get(slot, 0) + count
    return first.model_copy(update={"buckets": sorted(sums.items())})


def merge(items: Sequence[tuple[str, H]]) -> list[H]:
    """One histogram per series (label set and scale), busiest first."""
    groups: dict[tuple[LabelSet, Scale], list[H]] = {}
    for _, hist in items:
        groups.setdefault((label_set(hist), hist.scale), []).append(hist)
    out = []
    for (labels, _), hists in groups.items():
        merged = combine(hists)
        out.append(merged.model_copy(update={"labels": dict(labels)}))
    out.sort(key=lambda h: -h.total)
    return out


def delta(current: H, previous: H | None) -> H:
    before = dict(previous.buckets) if previous is not None else {}
    kept = [(s, c - before.get(s, 0)) for s, c in current.buckets if c - before.get(s, 0) > 0]
    return current.model_copy(update={"buckets": kept})


def title(hist: BucketHistogram) -> str:
    labels = ", ".join(f"{k} = {v}" for k, v in hist.labels.items())
    return f"{hist.name} ({labels})" if labels else hist.name


# -- percentiles ---------------------------------------------------------------------------


def nonempty(buckets: Buckets) -> list[tuple[int, int]]:
    return sorted((slot, count) for slot, count in buckets if count > 0)


@lru_cache(maxsize=256)
def _exact(p: float) -> Fraction:
    """p as the decimal it was written as: 99.9% of 1000 must be rank 999, not 1000 through a
    float error."""
    if not 0 < p <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {p}")
    return Fraction(str(p))


def percentiles(
    items: Sequence[tuple[int, int]], n: int, ps: Sequence[float], scale: Scale
) -> dict[float, int | None]:
    """Several percentiles of sorted non-empty buckets holding n values, in one pass: the
    upper bound of the bucket where the cumulative count reaches rank ceil(p% of n)."""
    ranks = sorted((max(1, math.ceil(_exact(p) * n / 100)), p) for p in ps)
    found: dict[float, int | None] = dict.fromkeys(ps)
    if n == 0:
        return found
    seen, i = 0, 0
    for slot, count in items:
        seen += count
        while i < len(ranks) and seen >= ranks[i][0]:
            found[ranks[i][1]] = scale.upper(slot)
            i += 1
        if i == len(ranks):
            return found
    raise AssertionError("unreachable: the last bucket reaches every rank")


@dataclass(frozen=True)
class Summary:
    count: int
    percentiles: dict[float, int | None]
    max_slot: int | None
    scale: Scale

    @property
    def max_bounds(self) -> tuple[int | None, int | None] | None:
        return self.scale.bounds(self.max_slot) if self.max_slot is not None else None


def summarize(buckets: Buckets, scale: Scale, ps: Sequence[float] = DEFAULT_PERCENTILES) -> Summary:
    items = nonempty(buckets)
    n = sum(count for _, count in items)
    return Summary(
        count=n,
        percentiles=percentiles(items, n, ps, scale),
        max_slot=items[-1][0] if items else None,
        scale=scale,
    )


# -- text ----------------------------------------------------------------------------------


def header(unit: str) -> str:
    return f"     {unit:<19} : count     distribution"


def empty_lines(unit: str) -> list[str]:
    return [header(unit), "     (no samples)"]


def empty_slot(scale: Scale, slot: int) -> str:
    """A slot's row with no bar, to pad a histogram to its neighbours' slots."""
    return f"{scale.label(slot)} : 0"


def histogram_lines(
    hist: BucketHistogram, low: int | None = None, high: int | None = None
) -> list[str]:
    """bcc's histogram: a row per slot from the first non-empty one to the highest listed;
    `low`/`high` pad it (empty rows) to cover slots its neighbours have."""
    counts = dict(hist.buckets)
    used = [s for s, c in hist.buckets if c]
    if not used:
        return empty_lines(hist.unit)
    first, top = min(used), max(max(counts), high if high is not None else 0)
    peak = max(counts.values())
    lines = [header(hist.unit)]
    start = max(first, 0) if low is None else max(min(low, first), 0)
    for slot in range(start, top + 1):
        if slot < first:
            lines.append(empty_slot(hist.scale, slot))
            continue
        count = counts.get(slot, 0)
        bar = "*" * (count * BAR_WIDTH // peak if peak else 0)
        lines.append(f"{hist.scale.label(slot)} : {count:<8} |{bar:<{BAR_WIDTH}}|")
    return lines


def family_kind(model: type[H]) -> Kind[H]:
    """The Kind of a histogram model: everything but its scale and model is shared."""
    return Kind(
        model=model,
        merge=merge,
        delta=delta,
        text=histogram_lines,
        title=title,
        series=series,
    )
