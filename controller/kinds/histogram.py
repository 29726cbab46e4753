"""Histograms (log2 and linear alike) on the controller: percentiles per host and bcc-style
histograms side by side, digests for reports, and the pNN/count trend metrics."""

from __future__ import annotations

from collections.abc import Sequence

from controller.cli.text import Line, side_by_side, table_lines
from controller.kinds.base import Answer, Column, View
from controller.reports import digest as dg
from node_agent.kinds import histogram
from node_agent.kinds.histogram import BucketHistogram, Scale, combine, histogram_lines

HIST_DETAIL = 3  # bcc-style histograms for the busiest label sets only
FLEET = "(all)"


def span_text(scale: Scale, slot: int) -> str:
    """A slot's values as "low-high", "<min" or ">=max"."""
    low, high = scale.bounds(slot)
    if low is None:
        return f"<{scale.upper(slot) + 1}"
    return f">={low}" if high is None else f"{low}-{high}"


def section(
    hists: Sequence[BucketHistogram], columns: Sequence[Column], top: int, width: int
) -> list[Line]:
    name, unit = hists[0].name, hists[0].unit
    keys = list(dict.fromkeys(k for h in hists for k in h.labels))
    shown = hists[:top]
    header = [k.upper() for k in keys] + ["HOST", "COUNT", "P50", "P90", "P99", "MAX"]
    right = [False] * (len(keys) + 1) + [True] * 5
    rows: list[list[str]] = []
    for merged in shown:
        owners = [(c.header, c.series(merged)) for c in columns]
        if len(columns) > 1:
            owners.append((FLEET, merged))
        for i, (who, hist) in enumerate(owners):
            label_cells = [str(merged.labels.get(k, "")) if i == 0 else "" for k in keys]
            rows.append([*label_cells, who, *_summary_cells(hist, merged.scale)])
    sets = f", top {len(shown)} of {len(hists)} label sets" if keys else ""
    lines = [
        Line(f"{name}: {hists[0].scale} histogram of {unit}{sets}", "title"),
        Line("percentiles are the upper bound of their bucket; MAX is the highest bucket", "dim"),
        *table_lines(header, rows, right),
    ]
    if len(hists) > len(shown):
        lines.append(Line(f"... {len(hists) - len(shown)} more label sets (--top)", "dim"))
    for merged in hists[: min(HIST_DETAIL, top)]:
        lines.append(Line(""))
        lines += _mini_histograms(merged, columns, width)
    return lines


def _summary_cells(hist: BucketHistogram | None, scale: Scale) -> list[str]:
    summary = histogram.summarize(hist.buckets if hist is not None else [], scale)
    if summary.count == 0 or summary.max_slot is None:
        return ["0", "-", "-", "-", "-"]
    cells = [str(summary.count)]
    cells += [str(v) if v is not None else "-" for v in summary.percentiles.values()]
    return [*cells, span_text(scale, summary.max_slot)]


def _mini_histograms(merged: BucketHistogram, columns: Sequence[Column], width: int) -> list[Line]:
    """One bcc-style histogram per host, next to each other where they fit, slots aligned."""
    hists = [(c.header, c.series(merged)) for c in columns]
    used = [s for _, h in hists if h is not None for s, n in h.buckets if n > 0]
    low, high = (min(used), max(used)) if used else (0, 0)
    where = ", ".join(f"{k} = {v}" for k, v in merged.labels.items())
    blocks = []
    for header, hist in hists:
        title = f"{header} ({where})" if where else header
        blocks.append([title, *aligned_histogram(hist, merged.unit, low, high)])
    return [Line(text) for text in side_by_side(blocks, width)]


def aligned_histogram(hist: BucketHistogram | None, unit: str, low: int, high: int) -> list[str]:
    """bcc's histogram lines, padded with empty slots to cover [low, high] like its neighbours."""
    if hist is None or hist.total == 0:
        return histogram.empty_lines(unit)
    return histogram_lines(hist, low, high)


def digest(hist: BucketHistogram, run: dg.RunDigest, details: list[dg.TableDetail]) -> None:
    run.histograms.append(dg.histogram(hist))


def metric(kind: str, key: str | None, hists: Sequence[BucketHistogram], span_s: float) -> Answer:
    """pNN and count over every label set of the name (those of the first one's scale)."""
    if not (kind.startswith("p") or kind == "count"):
        return None
    merged = combine([h for h in hists if h.scale == hists[0].scale])
    if kind == "count":
        return float(merged.total), "events"
    found = histogram.summarize(merged.buckets, merged.scale, (float(kind[1:]),))
    value = found.percentiles[float(kind[1:])]
    return (None if value is None else float(value)), hists[0].unit


VIEW = View(section=section, digest=digest, metric=metric, grouped=True)
