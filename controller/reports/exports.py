"""Exports for other tools: histograms as OpenMetrics text, stacks as folded text and speedscope."""

from __future__ import annotations

import re
from typing import Any

from controller.jobs.models import JobResults
from node_agent.protocol import FoldedStacks, KeyValue, Log2Histogram
from node_agent.render import slot_bounds

OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"
_BAD = re.compile(r"[^a-zA-Z0-9_]")


def _name(s: str) -> str:
    out = _BAD.sub("_", s)
    return out if out and not out[0].isdigit() else f"_{out}"


def _value(v: KeyValue) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: list[tuple[str, KeyValue]]) -> str:
    return ",".join(f'{_name(k)}="{_value(v)}"' for k, v in pairs)


def openmetrics(results: JobResults) -> str:
    """One histogram family per name, one series per host and label set.

    `le` is each log2 slot's upper bound (values are integers, so `<= le` is exact); buckets are
    the union of the family's slots so series line up; `_sum` is omitted: log2 buckets lose it.
    """
    families: dict[str, list[tuple[str, Log2Histogram]]] = {}
    for run in results.hosts:
        for r in run.results:
            if isinstance(r, Log2Histogram):
                families.setdefault(r.name, []).append((run.host, r))
    lines: list[str] = []
    for name, series in families.items():
        metric = f"fleettrace_{_name(name)}"
        unit = series[0][1].unit
        slots = sorted({s for _, h in series for s, _ in h.buckets})
        lines += [
            f"# TYPE {metric} histogram",
            f"# HELP {metric} {name} in {unit}; log2 buckets, le = bucket upper bound; "
            "_sum omitted (not recorded)",
        ]
        for host, hist in series:
            counts: dict[int, int] = {}
            for s, c in hist.buckets:
                counts[s] = counts.get(s, 0) + c
            base: list[tuple[str, KeyValue]] = [
                ("host", host),
                *((k, v) for k, v in hist.labels.items() if k != "host"),
            ]
            seen = 0
            for slot in slots:
                seen += counts.get(slot, 0)
                le = f"{float(slot_bounds(slot)[1])}"
                lines.append(f"{metric}_bucket{{{_labels([*base, ('le', le)])}}} {seen}")
            lines.append(f"{metric}_bucket{{{_labels([*base, ('le', '+Inf')])}}} {seen}")
            lines.append(f"{metric}_count{{{_labels(base)}}} {seen}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def stacks_of(results: JobResults, host: str | None) -> list[FoldedStacks] | None:
    """The fleet's merged stacks, or one host's; None when there is no such host."""
    if host is None:
        return [r for r in results.merged if isinstance(r, FoldedStacks)]
    for h in results.hosts:
        if h.host == host:
            return [r for r in h.results if isinstance(r, FoldedStacks)]
    return None


def folded(stacks: list[FoldedStacks]) -> str:
    """Brendan Gregg's folded format: `root;child;leaf count` per line."""
    return "".join(line + "\n" for fs in stacks for line in fs.folded())


def speedscope(results: JobResults) -> dict[str, Any]:
    """speedscope's file format: shared frames, one "sampled" profile per host with stacks."""
    index: dict[str, int] = {}
    profiles: list[dict[str, Any]] = []
    for host in results.hosts:
        samples: list[list[int]] = []
        weights: list[int] = []
        for fs in (r for r in host.results if isinstance(r, FoldedStacks)):
            for stack in fs.stacks:
                if stack.count > 0:
                    samples.append([index.setdefault(f, len(index)) for f in stack.frames])
                    weights.append(stack.count)
        if samples:
            profiles.append(
                {
                    "type": "sampled",
                    "name": host.host,
                    "unit": "none",
                    "startValue": 0,
                    "endValue": sum(weights),
                    "samples": samples,
                    "weights": weights,
                }
            )
    return {
        "$schema": SPEEDSCOPE_SCHEMA,
        "name": f"fleettrace job {results.job_id} ({results.program})",
        "exporter": "fleettrace",
        "activeProfileIndex": 0,
        "shared": {"frames": [{"name": name} for name in index]},
        "profiles": profiles,
    }
