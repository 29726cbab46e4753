"""bpftrace's hist() and lhist() buckets as our log2 and linear histogram slots, exactly.

hist(): bpftrace's buckets are (..., 0), 0, 1, [2, 4), [4, 8), ...; our log2 slot 0 holds 0,
slot s >= 1 holds [2**(s-1), 2**s - 1], so [2**k, 2**(k+1)) is slot k+1, the slot bcc's
bpf_log2l gives the same values (bcc counts 0 in slot 1, "0 -> 1"; bpftrace's 0 stays apart
in slot 0, which merges with bcc's correctly since slot 1's bounds cover 0). Negative values
have no log2 slot: they are counted in a `<map>.negative` counter table beside the histogram
(one row per key), so no value is lost and the histogram's percentiles stay those of the
values >= 0. bpftrace 0.17's log2 stops at 2**31: every value >= 2**31 (3e9 and 2**62
alike) lands in its top bucket, which its text output calls [2G, 4G) and its JSON prints with
32-bit overflowed bounds (min -2147483648, max 0). That bucket is open above, so it is no
slot of ours: its values are counted in a `<map>.overflow` counter table (one row per key,
"values >= 2**31"), the way negative ones are, and percentiles are of the values below 2**31.

lhist(v, min, max, step): bpftrace keeps n = (max - min) // step buckets and an overflow
bucket from min + n*step up (it prints that bucket's low end as max, even when max - min is
not a multiple of step), so our LinearHistogram gets max = min + n*step: the values each slot
really holds. min/max/step come from the script (`lhist` argument of Maps); without them they
are inferred from the printed buckets (a host that saw no underflow may then infer another
min than one that did, and the two do not merge: pass the script's arguments).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from node_agent.bounds import MAX_COUNT
from node_agent.bpftrace.keys import KeySplitter, integer
from node_agent.kinds import CounterTable, LinearHistogram, Log2Histogram
from node_agent.kinds.linear_histogram import MAX_LINEAR_BUCKETS
from node_agent.protocol import KeyValue, Result

BROKEN_TOP = (-(2**31), 0)  # bpftrace 0.17's JSON bounds of its top log2 bucket, [2**31, ...)
NEGATIVE, OVERFLOW = -1, -2  # the pseudo slots of hist()'s buckets counted beside it
PSEUDO = (("negative", NEGATIVE), ("overflow", OVERFLOW))  # as `<map>.negative`, ...
UNIT = "value"


@dataclass(frozen=True)
class Bucket:
    low: int | None  # None: open below (values under 0 for hist(), under min for lhist())
    high: int | None  # None: open above (lhist()'s overflow)
    count: int


def read_buckets(payload: object) -> list[Bucket] | None:
    """bpftrace's bucket list, or None when it is not one."""
    if not isinstance(payload, list):
        return None
    out = []
    for item in payload:
        if not isinstance(item, dict):  # decoded JSON: a dict (an ABC check costs 10x)
            return None
        count = integer(item.get("count"))
        low, high = integer(item.get("min")), integer(item.get("max"))
        if count is None or count < 0 or (low is None and high is None):
            return None
        if ("min" in item and low is None) or ("max" in item and high is None):
            return None
        out.append(Bucket(low, high, count))
    return out


def log2_slot(bucket: Bucket) -> int | None:
    """Our log2 slot for a bpftrace hist() bucket; NEGATIVE for its negative bucket, OVERFLOW
    for 0.17's open-ended top one (>= 2**31); None if the bucket is no hist() bucket."""
    return _log2_slot(bucket.low, bucket.high)


@lru_cache(maxsize=1024)  # a map prints the same few dozen bounds over and over
def _log2_slot(low: int | None, high: int | None) -> int | None:
    if low is None:
        return NEGATIVE if high == -1 else None
    if (low, high) == (0, 0):
        return 0
    if (low, high) == BROKEN_TOP:
        return OVERFLOW
    if high is not None and low >= 1 and low & (low - 1) == 0 and high == 2 * low - 1:
        return low.bit_length()
    return None


@dataclass(frozen=True)
class LinearRange:
    min: int
    max: int  # min + n*step: where bpftrace's overflow bucket really starts
    step: int

    @classmethod
    def of_args(cls, low: int, high: int, step: int) -> LinearRange | None:
        if step < 1 or high <= low:
            return None
        n = (high - low) // step
        return cls(low, low + n * step, step) if 1 <= n <= MAX_LINEAR_BUCKETS else None

    @classmethod
    def inferred(cls, buckets: list[Bucket]) -> LinearRange | None:
        """From printed buckets: the step of the bounded ones, min from the underflow bucket
        (or the lowest bucket), the overflow's start from the overflow bucket (or the top)."""
        bounded = [b for b in buckets if b.low is not None and b.high is not None]
        steps = {b.high - b.low + 1 for b in bounded if b.low is not None and b.high is not None}
        if len(steps) != 1:
            return None
        step = steps.pop()
        under = [b.high + 1 for b in buckets if b.low is None and b.high is not None]
        over = [b.low for b in buckets if b.high is None and b.low is not None]
        low = under[0] if under else min(b.low for b in bounded if b.low is not None)
        high = over[0] if over else max(b.high for b in bounded if b.high is not None) + 1
        return cls.of_args(low, high, step)

    def slot(self, bucket: Bucket) -> int | None:
        n = (self.max - self.min) // self.step
        if bucket.low is None:
            return 0
        if bucket.high is None:
            return n + 1
        offset = bucket.low - self.min
        slot = offset // self.step + 1
        if offset % self.step or not 1 <= slot <= n or bucket.high != bucket.low + self.step - 1:
            return None
        return slot


class HistogramReader:
    """One print of a hist()/lhist() map into histograms, one per key, busiest first."""

    def __init__(self, lhist: Mapping[str, tuple[int, int, int]], max_rows: int) -> None:
        self.lhist = lhist
        self.max_rows = max_rows

    def read(
        self,
        name: str,
        function: str,
        payload: object,
        splitter: KeySplitter,
        skipped: Counter[str],
    ) -> list[Result]:
        """`function` is "hist" or "lhist" as the script says, "" when it does not: then
        buckets that are all log2 buckets make a log2 histogram."""
        entries: list[tuple[list[str], object]]
        if isinstance(payload, Mapping):
            keys = [str(k) for k in payload]
            split = splitter.split_all(keys, skipped)
            values = list(payload.values())
            entries = [(f, v) for f, v in zip(split, values, strict=True) if f is not None]
        else:
            splitter.kinds = []
            entries = [([], payload)]
        parsed: list[tuple[dict[str, KeyValue], list[Bucket]]] = []
        names = [f.name for f in splitter.fields()]
        for fields, value in entries:
            buckets = read_buckets(value)
            if buckets is None:
                skipped[f"{function}() buckets that are not bpftrace's"] += 1
                continue
            parsed.append((dict(zip(names, splitter.values(fields), strict=True)), buckets))
        log2 = all(log2_slot(b) is not None for _, buckets in parsed for b in buckets)
        if function == "lhist" or (not function and not log2):
            return self._linear(name, parsed, skipped)
        if not log2:
            skipped["hist() buckets that are not log2 buckets"] += 1
            return []
        return self._log2(name, splitter, parsed, skipped)

    def _counted(
        self,
        parsed: list[tuple[dict[str, KeyValue], list[Bucket]]],
        slot_of: Callable[[Bucket], int | None],
        skipped: Counter[str],
        bad: str,
    ) -> list[tuple[dict[str, KeyValue], Counter[int]]]:
        out = []
        for labels, buckets in parsed:
            slots: Counter[int] = Counter()
            for bucket in buckets:
                slot = slot_of(bucket)
                if slot is None:
                    skipped[bad] += 1
                elif bucket.count:
                    slots[slot] += bucket.count
            out.append((labels, slots))
        return out

    def _busiest(
        self, counted: list[tuple[dict[str, KeyValue], Counter[int]]], skipped: Counter[str]
    ) -> list[tuple[dict[str, KeyValue], list[tuple[int, int]]]]:
        """The max_rows busiest, their buckets sorted and bounded: only they become models."""
        ordered = sorted(counted, key=lambda entry: -sum(entry[1].values()))
        if len(ordered) > self.max_rows:
            skipped["histograms beyond max_rows (the busiest kept)"] += len(ordered) - self.max_rows
        return [
            (labels, sorted((s, min(c, MAX_COUNT)) for s, c in slots.items()))
            for labels, slots in ordered[: self.max_rows]
        ]

    def _log2(
        self,
        name: str,
        splitter: KeySplitter,
        parsed: list[tuple[dict[str, KeyValue], list[Bucket]]],
        skipped: Counter[str],
    ) -> list[Result]:
        counted = self._counted(parsed, log2_slot, skipped, "hist() bucket that is no log2 one")
        beside = [self._beside(f"{name}.{what}", splitter, counted, slot) for what, slot in PSEUDO]
        out: list[Result] = [
            Log2Histogram(name=name, unit=UNIT, labels=labels, buckets=buckets)
            for labels, buckets in self._busiest(counted, skipped)
        ]
        return out + [table for table in beside if table is not None]

    def _beside(
        self,
        name: str,
        splitter: KeySplitter,
        counted: list[tuple[dict[str, KeyValue], Counter[int]]],
        slot: int,
    ) -> CounterTable | None:
        """The values of one pseudo slot (taken out of `counted`) as a counter table by key."""
        rows = [
            (list(labels.values()), [min(n, MAX_COUNT)])
            for labels, slots in counted
            if (n := slots.pop(slot, 0))
        ]
        if not rows:
            return None
        rows.sort(key=lambda row: -row[1][0])
        return CounterTable(
            name=name,
            key_fields=splitter.fields(),
            rows=rows[: self.max_rows],
            total_rows=len(rows),
            truncated=len(rows) > self.max_rows,
        )

    def _linear(
        self,
        name: str,
        parsed: list[tuple[dict[str, KeyValue], list[Bucket]]],
        skipped: Counter[str],
    ) -> list[Result]:
        args = self.lhist.get(name)
        every = [b for _, buckets in parsed for b in buckets]
        scale = LinearRange.of_args(*args) if args else LinearRange.inferred(every)
        if scale is None:
            skipped["lhist() whose min, max and step cannot be known"] += 1
            return []
        bad = "lhist() bucket outside its min, max and step"
        counted = self._counted(parsed, scale.slot, skipped, bad)
        return [
            LinearHistogram(
                name=name,
                unit=UNIT,
                labels=labels,
                min=scale.min,
                max=scale.max,
                step=scale.step,
                buckets=buckets,
            )
            for labels, buckets in self._busiest(counted, skipped)
        ]
