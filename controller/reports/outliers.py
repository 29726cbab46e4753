"""Comparable metrics per host, deviation from the fleet median, ranked outlier sentences."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from controller.reports.analysis import (
    JS_THRESHOLD,
    MIN_HOSTS_FOR_MAD,
    Z_THRESHOLD,
    human,
    modified_z,
    tie_aware_z,
)
from controller.reports.models import HistogramStats, Metric, MetricId, Outlier, TableStats
from node_agent.protocol import KeyValue

PERCENTILES = ("p50", "p90", "p99", "max")


def series_name(name: str, labels: Mapping[str, KeyValue]) -> str:
    inner = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}" if inner else name


def key_text(fields: Sequence[str], key: Sequence[KeyValue]) -> str:
    return " ".join(f"{f}={v}" for f, v in zip(fields, key, strict=True)) or "(all)"


def histogram_metrics(stats: HistogramStats) -> list[Metric]:
    series = series_name(stats.name, stats.labels)
    out = [
        Metric(id=f"hist:{series}:{p}", label=f"{p} {series}", value=float(value), unit=stats.unit)
        for p in PERCENTILES
        if (value := getattr(stats, p)) is not None
    ]
    if stats.rate_per_s is not None:
        out.append(
            Metric(
                id=f"hist:{series}:rate",
                label=f"{series} events",
                value=stats.rate_per_s,
                unit="/s",
            )
        )
    return out


def table_metrics(
    stats: TableStats, keys: Sequence[tuple[str, float]], span_s: float | None
) -> list[Metric]:
    """Totals per value field and the fleet's busiest keys (text, this host's first value),
    per second if the span is known."""
    per, unit = (span_s, "/s") if span_s else (1.0, "")
    how = list(stats.aggregations or [])
    sums = [i >= len(how) or how[i] == "sum" for i in range(len(stats.value_fields))]
    out = [  # a min, max or mean compares as it is, never per second
        Metric(
            id=f"table:{stats.name}:{field}",
            label=f"{stats.name} {field}",
            value=float(total / per) if is_sum else float(total),
            unit=unit if is_sum else "",
        )
        for field, total, is_sum in zip(stats.value_fields, stats.totals, sums, strict=True)
    ]
    out += [
        Metric(
            id=f"key:{stats.name}:{text}", label=f"{stats.name} {text}", value=v / per, unit=unit
        )
        for text, v in keys
    ]
    return out


def medians(per_host: Mapping[str, Sequence[Metric]]) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for metrics in per_host.values():
        for m in metrics:
            values.setdefault(m.id, []).append(m.value)
    return {mid: statistics.median(v) for mid, v in values.items()}


def deviation(metrics: Sequence[Metric], fleet: Mapping[str, float]) -> dict[str, float | None]:
    return {m.id: (m.value / fleet[m.id] if fleet.get(m.id) else None) for m in metrics}


def _say(value: float, unit: str) -> str:
    return human(value, unit) if unit not in ("/s", "") else f"{human(value, '')}{unit}"


def mad_outliers(
    per_host: Mapping[str, Sequence[Metric]], fleet: Mapping[str, float]
) -> list[Outlier]:
    by_metric: dict[str, list[tuple[str, Metric]]] = {}
    for host, metrics in per_host.items():
        for m in metrics:
            by_metric.setdefault(m.id, []).append((host, m))
    out: list[Outlier] = []
    for mid, items in by_metric.items():
        scores = tie_aware_z([m.value for _, m in items])
        med = fleet[mid]
        for (host, m), z in zip(items, scores, strict=True):
            if abs(z) <= Z_THRESHOLD:
                continue
            vs = f"({_say(m.value, m.unit)} vs {_say(med, m.unit)})"
            if med:
                sentence = f"{host}: {m.label} {m.value / med:.3g}x the fleet median {vs}"
            else:
                sentence = f"{host}: {m.label} {_say(m.value, m.unit)} where the fleet median is 0"
            out.append(
                Outlier(
                    host=host,
                    metric=mid,
                    kind="mad",
                    value=m.value,
                    median=med,
                    score=abs(z),
                    rank_score=abs(z) / Z_THRESHOLD,
                    sentence=sentence,
                )
            )
    return out


def distance_outliers(scored: Mapping[str, Sequence[tuple[str, float]]]) -> list[Outlier]:
    """Hosts whose bucket distribution differs from the fleet's merged one, given each
    series' (host, Jensen-Shannon divergence) pairs."""
    out: list[Outlier] = []
    for series, items in scored.items():
        if len(items) < 2:
            continue
        # The fleet includes the odd host, so normal hosts drift too: keep only standouts.
        zs = modified_z([jsd for _, jsd in items])
        for (host, jsd), z in zip(items, zs, strict=True):
            if jsd < JS_THRESHOLD or (len(items) >= MIN_HOSTS_FOR_MAD and z <= Z_THRESHOLD):
                continue
            out.append(
                Outlier(
                    host=host,
                    metric=f"hist:{series}:distribution",
                    kind="distance",
                    value=jsd,
                    median=None,
                    score=jsd,
                    rank_score=jsd / JS_THRESHOLD,
                    sentence=f"{host}: {series} distribution differs from the fleet's "
                    f"(Jensen-Shannon divergence {jsd:.2f})",
                )
            )
    return out


def ranked(outliers: Sequence[Outlier]) -> list[Outlier]:
    """Strongest first; a key's outlier goes just before its own table's total on that host,
    since the key says why the total is off."""
    order = sorted(outliers, key=lambda o: (-o.rank_score, o.host, o.metric))
    out: list[Outlier] = []
    for outlier in order:
        if outlier in out:
            continue
        metric = MetricId.parse(outlier.metric)
        if metric.source == "table":
            out += [
                o
                for o in order
                if o.host == outlier.host
                and MetricId.parse(o.metric).is_key_of(metric)
                and o not in out
            ]
        out.append(outlier)
    return out
