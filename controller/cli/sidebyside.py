"""The core view: a job's results with hosts side by side and the fleet total.

Every host that sent data gets a column; a host whose run did not succeed is marked `*`, and
one without any data is named with its state instead of showing an empty column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from controller.cli.text import PLAIN_WIDTH, Line, clip, side_by_side, table_lines
from controller.jobs.models import HostResult, JobResults, RunPublic
from controller.jobs.stats import summarize
from node_agent.protocol import (
    CounterTable,
    EventSamples,
    FoldedStacks,
    KeyValue,
    Log2Histogram,
    Result,
    RunState,
)
from node_agent.render import histogram_lines, samples_lines
from node_agent.safe_text import printable

TOP = 20
HIST_DETAIL = 3  # bcc-style histograms for the busiest label sets only
LEAF_FRAMES = 3
KEY_WIDTH = 48
FLEET = "(all)"
PARTIAL_MARK = "*"

LabelSet = tuple[tuple[str, KeyValue], ...]


@dataclass(frozen=True)
class _Column:
    host: str
    header: str
    results: Sequence[Result]

    def find(self, kind: str, name: str) -> Result | None:
        return next((r for r in self.results if r.kind == kind and r.name == name), None)

    def histogram(self, name: str, labels: LabelSet) -> Log2Histogram | None:
        for r in self.results:
            if isinstance(r, Log2Histogram) and r.name == name and _labels(r) == labels:
                return r
        return None


def _labels(hist: Log2Histogram) -> LabelSet:
    return tuple(sorted(hist.labels.items()))


def _did_not_succeed(host: HostResult) -> bool:
    return host.state.final and host.state is not RunState.succeeded


def render_results(
    job: JobResults,
    *,
    runs: Sequence[RunPublic] = (),
    top: int = TOP,
    width: int = PLAIN_WIDTH,
) -> list[Line]:
    """The whole view: host states, then one side-by-side section per result."""
    columns = [
        _Column(h.host, h.host + (PARTIAL_MARK if _did_not_succeed(h) else ""), h.results)
        for h in job.hosts
        if h.results
    ]
    missing = [h for h in job.hosts if not h.results and h.state.final]
    lines = _status(job, runs, width)
    if not job.merged:
        return [*lines, Line(""), Line("no results yet", "dim")]
    absent = ", ".join(f"{h.host} {h.state.value}" for h in missing)
    for section in _sections(job.merged):
        lines.append(Line(""))
        first = section[0]
        if isinstance(first, CounterTable):
            lines += _counters(first, columns, top)
        elif isinstance(first, Log2Histogram):
            hists = [r for r in section if isinstance(r, Log2Histogram)]
            lines += _histograms(hists, columns, top, width)
        elif isinstance(first, FoldedStacks):
            lines += _stacks(first, columns, top, width)
        else:
            lines += _samples(first, top)
        if absent:
            lines.append(Line(f"no data from: {absent}", "dim"))
    return lines + _notes(job)


def _sections(merged: Sequence[Result]) -> list[list[Result]]:
    """One section per result, except that a histogram's label sets stay together."""
    sections: list[list[Result]] = []
    for result in merged:
        prev = sections[-1][0] if sections else None
        if (
            isinstance(result, Log2Histogram)
            and isinstance(prev, Log2Histogram)
            and prev.name == result.name
        ):
            sections[-1].append(result)
        else:
            sections.append([result])
    return sections


def _status(job: JobResults, runs: Sequence[RunPublic], width: int) -> list[Line]:
    by_host = {r.host: r for r in runs}
    ok = sum(1 for h in job.hosts if h.state is RunState.succeeded)
    title = (
        f"job {job.job_id}  {job.program}  {job.state.value}"
        f"  ({ok} of {len(job.hosts)} hosts succeeded)"
    )
    rows: list[list[str]] = []
    for host in job.hosts:
        run = by_host.get(host.host)
        count = run.snapshots if run is not None else (host.seq + 1 if host.seq is not None else 0)
        snapshots = f"{count}, final" if host.final else str(count)
        mark = PARTIAL_MARK if host.results and _did_not_succeed(host) else ""
        rows.append([host.host + mark, host.state.value, snapshots, _run_note(run)])
    header = ["HOST", "STATE", "SNAPSHOTS", "NOTE"]
    lines = table_lines(header, rows, right=[False, False, True, False])
    lines = [Line(clip(line.text, width), line.style) for line in lines]
    bad = {h.host for h in job.hosts if _did_not_succeed(h)}
    for i, host in enumerate(job.hosts, start=1):
        if host.host in bad:
            lines[i] = Line(lines[i].text, "bad")
    out = [Line(title, "title"), *lines]
    if any(h.results and _did_not_succeed(h) for h in job.hosts):
        out.append(
            Line(f"{PARTIAL_MARK} run did not succeed: its columns hold what it sent", "dim")
        )
    return out


def _run_note(run: RunPublic | None) -> str:
    if run is None:
        return ""
    if run.error:
        code = run.error.get("code")
        message = str(run.error.get("message", ""))
        return f"{code}: {message}" if code else message
    return run.reason or ""


def _key_cell(value: KeyValue, kind: str) -> str:
    # Escaped before the cut, so the width is what the terminal shows; a path or address
    # says the most at its end.
    text = printable(str(value))
    if kind in ("path", "addr"):
        return clip(text, KEY_WIDTH, keep="end")
    return clip(text, KEY_WIDTH)


def _counters(merged: CounterTable, columns: Sequence[_Column], top: int) -> list[Line]:
    value = merged.value_fields[0]
    shown = merged.rows[:top]
    tables = {c.host: c.find("counter_table", merged.name) for c in columns}
    per_host = {
        host: {tuple(k): v for k, v in t.rows}
        for host, t in tables.items()
        if isinstance(t, CounterTable)
    }
    header = [f.name.upper() for f in merged.key_fields] + [c.header for c in columns]
    header += ["TOTAL", *(f"TOTAL {v.upper()}" for v in merged.value_fields[1:])]
    right = [f.type in ("int", "port") for f in merged.key_fields]
    right += [True] * (len(header) - len(right))
    rows: list[list[str]] = []
    for keys, values in shown:
        cells = [_key_cell(k, f.type) for k, f in zip(keys, merged.key_fields, strict=False)]
        for column in columns:
            host_rows = per_host.get(column.host)
            if host_rows is None:
                cells.append("-")
            else:
                cells.append(str(host_rows.get(tuple(keys), [0])[0]))
        cells += [str(v) for v in values]
        rows.append(cells)
    title = f"{merged.name}: {value} per host, top {len(shown)} of {merged.total_rows} by total"
    lines = [Line(title, "title"), *table_lines(header, rows, right)]
    if merged.total_rows > len(shown):
        lines.append(Line(f"... {merged.total_rows - len(shown)} more rows (--top)", "dim"))
    if merged.truncated:
        lines.append(Line("note: some hosts truncated this table: totals are lower bounds", "note"))
    return lines


def _histograms(
    hists: Sequence[Log2Histogram], columns: Sequence[_Column], top: int, width: int
) -> list[Line]:
    name, unit = hists[0].name, hists[0].unit
    keys = list(dict.fromkeys(k for h in hists for k in h.labels))
    shown = hists[:top]
    header = [k.upper() for k in keys] + ["HOST", "COUNT", "P50", "P90", "P99", "MAX"]
    right = [False] * (len(keys) + 1) + [True] * 5
    rows: list[list[str]] = []
    for merged in shown:
        labels = _labels(merged)
        owners = [(c.header, c.histogram(name, labels)) for c in columns]
        if len(columns) > 1:
            owners.append((FLEET, merged))
        for i, (who, hist) in enumerate(owners):
            label_cells = [str(merged.labels.get(k, "")) if i == 0 else "" for k in keys]
            rows.append([*label_cells, who, *_summary_cells(hist)])
    sets = f", top {len(shown)} of {len(hists)} label sets" if keys else ""
    lines = [
        Line(f"{name}: log2 histogram of {unit}{sets}", "title"),
        Line("percentiles are the upper bound of their bucket; MAX is the highest bucket", "dim"),
        *table_lines(header, rows, right),
    ]
    if len(hists) > len(shown):
        lines.append(Line(f"... {len(hists) - len(shown)} more label sets (--top)", "dim"))
    for merged in hists[: min(HIST_DETAIL, top)]:
        lines.append(Line(""))
        lines += _mini_histograms(merged, columns, width)
    return lines


def _summary_cells(hist: Log2Histogram | None) -> list[str]:
    summary = summarize(hist.buckets if hist is not None else [])
    if summary.count == 0:
        return ["0", "-", "-", "-", "-"]
    cells = [str(summary.count)]
    cells += [str(v) if v is not None else "-" for v in summary.percentiles.values()]
    low, high = summary.max_bounds or (0, 0)
    return [*cells, f"{low}-{high}"]


def _mini_histograms(merged: Log2Histogram, columns: Sequence[_Column], width: int) -> list[Line]:
    """One bcc-style histogram per host, next to each other where they fit, slots aligned."""
    labels = _labels(merged)
    hists = [(c.header, c.histogram(merged.name, labels)) for c in columns]
    used = [s for _, h in hists if h is not None for s, n in h.buckets if n > 0]
    low, high = (min(used), max(used)) if used else (0, 0)
    where = ", ".join(f"{k} = {v}" for k, v in merged.labels.items())
    blocks = []
    for header, hist in hists:
        title = f"{header} ({where})" if where else header
        blocks.append([title, *aligned_histogram(hist, merged.unit, low, high)])
    return [Line(text) for text in side_by_side(blocks, width)]


def aligned_histogram(hist: Log2Histogram | None, unit: str, low: int, high: int) -> list[str]:
    """bcc's histogram lines, padded with empty slots to cover [low, high] like its neighbours."""
    if hist is None or hist.total == 0:
        return histogram_lines(Log2Histogram(name="", unit=unit))
    buckets = dict(hist.buckets)
    buckets.setdefault(high, 0)  # histogram_lines runs up to the highest slot listed
    head, *rows = histogram_lines(hist.model_copy(update={"buckets": sorted(buckets.items())}))
    first = min(s for s, n in hist.buckets if n > 0)
    return [head, *(_empty_slot(slot, unit) for slot in range(max(low, 0), first)), *rows]


def _empty_slot(slot: int, unit: str) -> str:
    # The slot's label exactly as histogram_lines draws it, so the columns stay aligned.
    drawn = histogram_lines(Log2Histogram(name="", unit=unit, buckets=[(slot, 1)]))[1]
    return drawn.split(":", 1)[0] + ": 0"


def _stacks(merged: FoldedStacks, columns: Sequence[_Column], top: int, width: int) -> list[Line]:
    shown = merged.stacks[:top]
    per_host: dict[str, dict[tuple[str, ...], int]] = {}
    for column in columns:
        found = column.find("folded_stacks", merged.name)
        if isinstance(found, FoldedStacks):
            per_host[column.host] = {tuple(s.frames): s.count for s in found.stacks}
    header = [c.header for c in columns] + ["TOTAL", "STACK"]
    rows = []
    for stack in shown:
        cells = []
        for column in columns:
            counts = per_host.get(column.host)
            cells.append("-" if counts is None else str(counts.get(tuple(stack.frames), 0)))
        rows.append([*cells, str(stack.count), short_stack(stack.frames)])
    right = [True] * (len(columns) + 1) + [False]
    body = table_lines(header, rows, right)
    room = max(40, width)
    title = f"{merged.name}: top {len(shown)} of {merged.total_rows} stacks by total {merged.unit}"
    lines = [
        Line(title, "title"),
        Line(
            f"STACK: first frame;..;{LEAF_FRAMES} leaf-most frames (--json for whole stacks)", "dim"
        ),
    ]
    lines += [Line(clip(line.text, room, keep="start"), line.style) for line in body]
    if merged.total_rows > len(shown):
        lines.append(Line(f"... {merged.total_rows - len(shown)} more stacks (--top)", "dim"))
    return lines


def short_stack(frames: Sequence[str], leaf: int = LEAF_FRAMES) -> str:
    """Root-first frames cut to the first one (the process) and the leaf-most few."""
    if len(frames) <= leaf + 1:
        return ";".join(frames)
    return ";".join([frames[0], "..", *frames[-leaf:]])


def _samples(merged: EventSamples, top: int) -> list[Line]:
    recent = merged.model_copy(update={"events": merged.events[-top:]})
    head, *rest = samples_lines(recent)
    return [
        Line(f"{merged.name}: recent events from all hosts, oldest first", "title"),
        Line(head, "header"),
        *(Line(text) for text in rest[:-1]),
        Line(rest[-1], "dim"),
    ]


def _notes(job: JobResults) -> list[Line]:
    notes = []
    for host in job.hosts:
        stats = host.stats
        if stats is None:
            continue
        said = []
        if stats.events_lost:
            said.append(f"{stats.events_lost} events lost")
        if stats.map_full_drops:
            said.append(f"{stats.map_full_drops} drops on full maps")
        if stats.rows_truncated:
            said.append("output truncated at max_rows")
        if said:
            notes.append(Line(f"note: {host.host}: {'; '.join(said)}", "note"))
    costs = [
        f"{host.host} {host.stats.overhead_pct:.1f} % ({host.stats.events_per_s:,.0f} events/s)"
        for host in job.hosts
        if host.stats is not None and host.stats.overhead_pct is not None
    ]
    if costs:
        notes.append(Line(f"cost to each host, % of one CPU: {', '.join(costs)}", "dim"))
    return [Line(""), *notes] if notes else []
