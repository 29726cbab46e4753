"""The core view: a job's results with hosts side by side and the fleet total.

Every host that sent data gets a column; a host whose run did not succeed is marked `*`, and
one without any data is named with its state instead of showing an empty column.
"""

from __future__ import annotations

from collections.abc import Sequence

from controller.cli.text import PLAIN_WIDTH, Line, clip, table_lines
from controller.jobs.models import HostResult, JobResults, RunPublic
from controller.kinds import Column, view_of
from controller.kinds.folded_stacks import short_stack
from controller.kinds.histogram import aligned_histogram
from node_agent.notes import stats_notes
from node_agent.protocol import Result, RunState

TOP = 20
PARTIAL_MARK = "*"

__all__ = ["TOP", "aligned_histogram", "render_results", "short_stack"]


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
        Column(h.host, h.host + (PARTIAL_MARK if _did_not_succeed(h) else ""), h.results)
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
        lines += view_of(section[0]).section(section, columns, top, width)
        if absent:
            lines.append(Line(f"no data from: {absent}", "dim"))
    return lines + _notes(job)


def _sections(merged: Sequence[Result]) -> list[list[Result]]:
    """One section per result, except that a grouped kind's results of one name (a
    histogram's label sets) stay together."""
    sections: list[list[Result]] = []
    for result in merged:
        prev = sections[-1][0] if sections else None
        if (
            prev is not None
            and view_of(result).grouped
            and (prev.kind, prev.name) == (result.kind, result.name)
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


def _notes(job: JobResults) -> list[Line]:
    notes = []
    for host in job.hosts:
        stats = host.stats
        if stats is None:
            continue
        said = stats_notes(stats, hints=False)
        if said:
            notes.append(Line(f"note: {host.host}: {'; '.join(said)}", "note"))
    costs = [
        f"{host.host} {host.stats.overhead_pct:.1f} % ({host.stats.events_per_s:,.0f} events/s)"
        for host in job.hosts
        if host.stats is not None and host.stats.overhead_pct is not None
    ]
    if costs:
        notes.append(Line(f"cost to each host, % of one CPU: {', '.join(costs)}", "dim"))
    points = [f"{h.host} {h.stats.attach}" for h in job.hosts if h.stats and h.stats.attach]
    if points:
        notes.append(Line(f"attach point on each host: {', '.join(points)}", "dim"))
    return [Line(""), *notes] if notes else []
