"""Exports for other tools: histograms as OpenMetrics text, stacks as folded text and speedscope."""

from __future__ import annotations

import re

from controller.jobs.merge import merge_stacks
from controller.reports.digest import HistDigest
from controller.reports.fleet import ReportInput
from controller.reports.models import (
    SpeedscopeFile,
    SpeedscopeFrame,
    SpeedscopeProfile,
    SpeedscopeShared,
)
from node_agent.kinds.histogram import Scale
from node_agent.protocol import FoldedStacks, KeyValue
from node_agent.safe_text import printable

OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_BAD = re.compile(r"[^a-zA-Z0-9_]")


def _name(s: str) -> str:
    out = _BAD.sub("_", s)
    return out if out and not out[0].isdigit() else f"_{out}"


def _unique(name: str, taken: set[str]) -> str:
    """`name`, or `name_2`, `name_3`...: names that sanitise alike must not collide."""
    out, n = name, 1
    while out in taken:
        n += 1
        out = f"{name}_{n}"
    taken.add(out)
    return out


def _label_name(key: str) -> str:
    name = _name(key)
    return f"l{name}" if name.startswith("__") else name  # `__` names are reserved


def _value(v: KeyValue) -> str:
    """A label value or HELP text: control characters shown as escapes first, then the
    OpenMetrics escapes (backslash, quote, newline), so every backslash left is an escape."""
    return printable(str(v)).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: list[tuple[str, KeyValue]]) -> str:
    return ",".join(f'{k}="{_value(v)}"' for k, v in pairs)


def _base_labels(host: str, labels: dict[str, KeyValue]) -> list[tuple[str, KeyValue]]:
    """`host`, then the series' labels under unique valid names (`le` stays the bucket's)."""
    taken = {"host", "le"}
    return [("host", host), *((_unique(_label_name(k), taken), v) for k, v in labels.items())]


def openmetrics(data: ReportInput) -> str:
    """One histogram family per name, one series per host and label set.

    `le` is each slot's upper bound (values are integers, so `<= le` is exact; an open top slot
    counts in +Inf only); buckets are the union of the family's slots so series line up; `_sum`
    is omitted: buckets lose it. Histograms of one name but other scales are another family.
    """
    families: dict[tuple[str, Scale], list[tuple[str, HistDigest]]] = {}
    for run in data.hosts:
        for h in run.digest.histograms if run.digest else []:
            families.setdefault((h.name, h.scale), []).append((run.host, h))
    lines: list[str] = []
    metrics: set[str] = set()
    for (name, scale), series in families.items():
        metric = _unique(f"fleettrace_{_name(name)}", metrics)
        unit = series[0][1].unit
        slots = sorted({s for _, h in series for s, _ in h.buckets()})
        lines += [
            f"# TYPE {metric} histogram",
            f"# HELP {metric} {_value(name)} in {_value(unit)}; {scale} buckets, "
            "le = bucket upper bound; _sum omitted (not recorded)",
        ]
        for host, hist in series:
            counts = dict(hist.buckets())
            base = _base_labels(host, {k: v for k, v in hist.labels.items() if k != "host"})
            seen = 0
            for slot in slots:
                seen += counts.get(slot, 0)
                high = scale.bounds(slot)[1]
                if high is None:
                    continue
                le = f"{float(high)}"
                lines.append(f"{metric}_bucket{{{_labels([*base, ('le', le)])}}} {seen}")
            lines.append(f"{metric}_bucket{{{_labels([*base, ('le', '+Inf')])}}} {seen}")
            lines.append(f"{metric}_count{{{_labels(base)}}} {seen}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def stacks_of(data: ReportInput, host: str | None) -> list[FoldedStacks] | None:
    """The fleet's merged stacks (one per name), or one host's; None when there is no such
    host."""
    if host is None:
        by_name: dict[str, list[FoldedStacks]] = {}
        for h in data.hosts:
            for s in h.digest.stacks if h.digest else []:
                by_name.setdefault(s.name, []).append(s)
        return [merge_stacks(group) for group in by_name.values()]
    for h in data.hosts:
        if h.host == host:
            return list(h.digest.stacks) if h.digest else []
    return None


def folded_frame(frame: str) -> str:
    """A frame that cannot end its line or split into two frames: backslash doubled, control
    characters (a newline) as escapes, `;` as `\\x3b`; so the format's separators stay ours."""
    return printable(frame.replace("\\", "\\\\")).replace(";", "\\x3b")


def folded(stacks: list[FoldedStacks]) -> str:
    """Brendan Gregg's folded format: `root;child;leaf count` per line."""
    return "".join(
        ";".join(folded_frame(f) for f in s.frames) + f" {s.count}\n"
        for fs in stacks
        for s in fs.stacks
    )


def speedscope(data: ReportInput) -> SpeedscopeFile:
    """speedscope's file format: shared frames, one "sampled" profile per host with stacks."""
    index: dict[str, int] = {}
    profiles: list[SpeedscopeProfile] = []
    for host in data.hosts:
        samples: list[list[int]] = []
        weights: list[float] = []
        for fs in host.digest.stacks if host.digest else []:
            for stack in fs.stacks:
                if stack.count > 0:
                    samples.append([index.setdefault(f, len(index)) for f in stack.frames])
                    weights.append(stack.count)
        if samples:
            profiles.append(
                SpeedscopeProfile(
                    name=printable(host.host),
                    unit="none",
                    startValue=0,
                    endValue=sum(weights),
                    samples=samples,
                    weights=weights,
                )
            )
    return SpeedscopeFile(
        name=f"fleettrace job {data.job_id} ({data.program})",
        exporter="fleettrace",
        activeProfileIndex=0,
        shared=SpeedscopeShared(frames=[SpeedscopeFrame(name=printable(n)) for n in index]),
        profiles=profiles,
    )
