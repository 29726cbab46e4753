"""Pure report math: robust outlier scores, histogram distance, projected keys, units."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence

from node_agent.kinds.counter_table import combine
from node_agent.protocol import CounterTable, KeyValue

Z_THRESHOLD = 3.5
JS_THRESHOLD = 0.1
MIN_HOSTS_FOR_MAD = 3
# Iglewicz & Hoaglin: 0.6745 makes MAD consistent with sigma; 1.2533 does the same for meanAD.
MAD_K = 0.6745
MEAN_AD_K = 1.253314
PID_FIELD = re.compile(r"^(pid|tid|tgid|ppid)$|_pid$")
NS_PER = {"nsec": 1, "ns": 1, "usec": 1_000, "us": 1_000, "msec": 1_000_000, "ms": 1_000_000}


def tie_aware_z(values: Sequence[float]) -> list[float]:
    """Outlier scores of one metric over hosts (|score| > Z_THRESHOLD is an outlier).

    Modified z-scores while the hosts spread (MAD > 0). When at least half of them agree on
    one value (MAD = 0), the mean-absolute-deviation fallback of `modified_z` scores a lone
    odd host n/1.2533 whatever its value: with 3 or 4 hosts never an outlier (the demo's
    web-2 at 273x the other two's p50 was not one), with 5 or more any difference at all. So
    there a host's score is how many times it is off the agreed value, on a log2 scale
    (counts smoothed by one): an outlier when more than 2x above or below it."""
    if len(values) < MIN_HOSTS_FOR_MAD:
        return [0.0] * len(values)
    med = statistics.median(values)
    if statistics.median(abs(v - med) for v in values) > 0:
        return modified_z(values)
    return [_times_off(v, med) for v in values]


def _times_off(value: float, agreed: float) -> float:
    """Z_THRESHOLD per doubling away from the agreed value, signed as value - agreed."""
    doublings = abs(math.log2((abs(value) + 1) / (abs(agreed) + 1)))
    return Z_THRESHOLD * doublings if value >= agreed else -Z_THRESHOLD * doublings


def modified_z(values: Sequence[float]) -> list[float]:
    """Modified z-scores; zeros when fewer than 3 values or when all values are equal."""
    if len(values) < MIN_HOSTS_FOR_MAD:
        return [0.0] * len(values)
    med = statistics.median(values)
    mad = statistics.median(abs(v - med) for v in values)
    if mad > 0:
        return [MAD_K * (v - med) / mad for v in values]
    mean_ad = statistics.fmean(abs(v - med) for v in values)
    if mean_ad == 0:
        return [0.0] * len(values)
    return [(v - med) / (MEAN_AD_K * mean_ad) for v in values]


def _distribution(buckets: Iterable[tuple[int, int]]) -> dict[int, float]:
    counts: dict[int, int] = {}
    for slot, count in buckets:
        counts[slot] = counts.get(slot, 0) + count
    total = sum(counts.values())
    return {s: c / total for s, c in counts.items() if c > 0} if total else {}


def js_divergence(
    p_buckets: Iterable[tuple[int, int]], q_buckets: Iterable[tuple[int, int]]
) -> float:
    """Jensen-Shannon divergence in bits (0 = same shape, 1 = disjoint); 0 if either is empty."""
    p, q = _distribution(p_buckets), _distribution(q_buckets)
    if not p or not q:
        return 0.0
    slots = set(p) | set(q)
    m = {s: (p.get(s, 0.0) + q.get(s, 0.0)) / 2 for s in slots}

    def kl(a: Mapping[int, float]) -> float:
        return sum(v * math.log2(v / m[s]) for s, v in a.items() if v > 0)

    return max(0.0, (kl(p) + kl(q)) / 2)


def comparable_fields(table: CounterTable) -> list[int]:
    """Indexes of key fields that mean the same on every host (pids do not)."""
    return [i for i, f in enumerate(table.key_fields) if not PID_FIELD.search(f.name)]


def project(table: CounterTable) -> dict[tuple[KeyValue, ...], list[int]]:
    """Rows combined over their non-pid key fields (summed, or min/max/mean as the table's
    fields say)."""
    keep = comparable_fields(table)
    groups: dict[tuple[KeyValue, ...], list[list[int]]] = {}
    for keys, values in table.rows:
        groups.setdefault(tuple(keys[i] for i in keep), []).append(values)
    return {
        key: combine(rows, table.value_fields, table.aggregations) for key, rows in groups.items()
    }


def human(value: float, unit: str) -> str:
    """A value in its histogram unit as people say it: 2.1 ms, 250 us, 3.0 s."""
    if unit in NS_PER:
        ns = value * NS_PER[unit]
        for div, name in ((1e9, "s"), (1e6, "ms"), (1e3, "us")):
            if ns >= div:
                return f"{_num(ns / div)} {name}"
        return f"{_num(ns)} ns"
    return f"{_num(value)} {unit}".rstrip()


def _num(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 100 or float(x).is_integer():
        return f"{x:,.0f}"
    return f"{x:.2g}" if abs(x) < 1 else f"{x:.1f}"
