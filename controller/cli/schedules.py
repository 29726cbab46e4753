"""`fleettrace schedules create|list|show|pause|resume|run|delete|trend|compare`."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import Any

from controller.cli import targets
from controller.cli.common import (
    add_api_options,
    api,
    kv,
    pair,
    positive,
    print_json,
    reply,
    script_lines,
    template_params,
    write_output,
)
from controller.cli.errors import CliError
from controller.cli.http import ApiClient
from controller.cli.jobs import job_lines
from controller.cli.text import Line, emit, plural, seconds, table_lines, when
from controller.jobs.models import JobPublic
from controller.reports.models import CompareReport
from controller.schedules.models import SchedulePublic
from controller.schedules.trend import ScheduleTrend, TrendSeries
from node_agent.arguments import add_script_options, parse_duration, span

PAGE = 500
# Trend columns shown as numbers; the sparkline covers every run.
TREND_COLUMNS = 8
SPARKS = "▁▂▃▄▅▆▇█"


def add_commands(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    add_api_options(common)
    common.add_argument("--json", action="store_true")
    parser = sub.add_parser("schedules", help="recurring captures, their history and trends")
    ssub = parser.add_subparsers(dest="schedules_command", required=True)

    create = ssub.add_parser("create", parents=[common], help="fire a program by cron or interval")
    create.add_argument("name")
    create.add_argument("program", help="a catalog program, or bpftrace (admins)")
    timing = create.add_mutually_exclusive_group(required=True)
    timing.add_argument("--cron", help='five fields, e.g. "*/5 * * * *"')
    timing.add_argument("--every", type=parse_duration, help="a fixed interval, e.g. 1h")
    create.add_argument("--tz", default="UTC", help="the cron's time zone (default UTC)")
    create.add_argument("--duration", type=parse_duration, required=True, help="each trace")
    targets.add_options(create)
    create.add_argument("--param", type=pair, action="append", default=[], metavar="K=V")
    add_script_options(create)
    create.add_argument("--keep-runs", type=positive, metavar="N", help="keep the last N runs")
    create.add_argument("--keep-for", type=span, metavar="AGE", help="keep runs this long, 7d")
    create.add_argument("--allow-overlap", action="store_true", help="fire while one runs")
    create.add_argument(
        "--misfire-grace", type=span, default=60.0, metavar="AGE", help="default 60s"
    )
    create.add_argument("--paused", action="store_true", help="create it paused")
    create.add_argument(
        "--continuous",
        action="store_true",
        help="with --every: keep the program loaded for --duration, a snapshot per interval",
    )
    create.set_defaults(func=cmd_create)

    listing = ssub.add_parser("list", parents=[common], help="schedules by name")
    listing.set_defaults(func=cmd_list)
    for name, help_text, func in (
        ("show", "a schedule and its recent runs", cmd_show),
        ("pause", "stop firing until resumed", cmd_pause),
        ("resume", "fire again from the next slot", cmd_resume),
        ("run", "fire once now", cmd_run),
        ("delete", "delete it; its jobs are kept", cmd_delete),
    ):
        command = ssub.add_parser(name, parents=[common], help=help_text)
        command.add_argument("schedule", metavar="NAME_OR_ID")
        command.set_defaults(func=func)

    trend = ssub.add_parser("trend", parents=[common], help="a metric per host over the runs")
    trend.add_argument("schedule", metavar="NAME_OR_ID")
    trend.add_argument("--metric", required=True, help="p99:HIST, count:HIST|T, total:T, key:T:K")
    trend.add_argument("--limit", type=positive, default=200, help="runs, newest kept")
    trend.add_argument(
        "--format",
        choices=("text", "html"),
        default="text",
        help="html: a self-contained page with a line chart per host (default: text)",
    )
    trend.add_argument("-o", "--output", type=Path, help="with --format html: write it here")
    trend.set_defaults(func=cmd_trend)

    compare = ssub.add_parser("compare", parents=[common], help="two runs host by host")
    compare.add_argument("schedule", metavar="NAME_OR_ID")
    compare.add_argument(
        "--runs", nargs=2, metavar=("BASE", "OTHER"), help="job ids (default: the last two)"
    )
    compare.set_defaults(func=cmd_compare)


def schedule_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": args.name,
        "template": {
            "program": args.program,
            "params": template_params(args),
            "duration_s": args.duration,
            "targets": targets.body(args),
        },
        "enabled": not args.paused,
        "retention": {"max_runs": args.keep_runs, "max_age_s": args.keep_for},
        "allow_overlap": args.allow_overlap,
        "misfire_grace_s": args.misfire_grace,
        "continuous": args.continuous,
    }
    if args.cron is not None:
        body |= {"cron": args.cron, "time_zone": args.tz}
    else:
        body["interval_s"] = args.every
    return body


def resolve(client: ApiClient, ref: str) -> dict[str, Any]:
    """A schedule by exact name or id."""
    offset = 0
    while True:
        page = client.get("/v1/schedules", params={"limit": PAGE, "offset": offset})
        for item in page["data"]:
            if ref in (item["name"], item["id"]):
                found: dict[str, Any] = item
                return found
        offset += len(page["data"])
        if not page["data"] or offset >= page["count"]:
            raise CliError(f"no schedule named {ref!r} (fleettrace schedules list)")


def timing_text(s: SchedulePublic) -> str:
    if s.cron is not None:
        return f"cron {s.cron} ({s.time_zone})"
    return f"every {seconds(s.interval_s)}"


def cmd_create(args: argparse.Namespace) -> int:
    with api(args) as client:
        data = client.post("/v1/schedules", schedule_body(args))
    s = SchedulePublic.model_validate(data)
    lines = [
        Line(f"created schedule {s.name} ({s.id}): {s.template['program']}, {timing_text(s)}"),
        Line(f"next fire: {when(s.next_fire_at) if s.enabled else 'paused'}", "dim"),
    ]
    return reply(args, data, lambda: lines)


def cmd_list(args: argparse.Namespace) -> int:
    items: list[dict[str, Any]] = []
    with api(args) as client:
        while True:
            page = client.get("/v1/schedules", params={"limit": PAGE, "offset": len(items)})
            items += page["data"]
            if not page["data"] or len(items) >= page["count"]:
                break
    return reply(args, {"data": items, "count": len(items)}, lambda: schedules_lines(items))


def schedules_lines(items: list[dict[str, Any]]) -> list[Line]:
    if not items:
        return [Line("no schedules", "dim")]
    rows = []
    for s in (SchedulePublic.model_validate(i) for i in items):
        last = s.recent[0].outcome.value if s.recent else "-"
        nxt = when(s.next_fire_at) if s.enabled else "paused"
        rows.append([s.name, s.template["program"], timing_text(s), nxt, last, s.id])
    header = ["NAME", "PROGRAM", "TIMING", "NEXT", "LAST", "ID"]
    return [*table_lines(header, rows), Line(plural(len(rows), "schedule"), "dim")]


def schedule_lines(s: SchedulePublic) -> list[Line]:
    retention = [
        f"last {s.retention.max_runs} runs" if s.retention.max_runs else "",
        f"{seconds(s.retention.max_age_s)}" if s.retention.max_age_s else "",
    ]
    template = s.template
    params, script = script_lines(template.get("params", {}), 11)
    fields = [
        ("program", template["program"]),
        ("params", kv(params)),
        ("targets", targets.text(template.get("targets", {}))),
        ("duration", seconds(template.get("duration_s"))),
        ("timing", timing_text(s)),
        ("mode", "continuous: a snapshot per slot" if s.continuous else "a trace per slot"),
        ("next", when(s.next_fire_at) if s.enabled else "paused"),
        ("retention", " or ".join(r for r in retention if r) or "keep everything"),
        ("overlap", "allowed" if s.allow_overlap else "skipped while a run is going"),
        ("misfire", f"latest missed slot run within {seconds(s.misfire_grace_s)}"),
        ("created", f"{when(s.created_at)} by {s.created_by or '-'}"),
    ]
    lines = [Line(f"schedule {s.name} ({s.id})", "title")]
    lines += [Line(f"{k + ':':<11}{v}") for k, v in fields]
    lines[3:3] = script  # after params
    if not s.recent:
        return [*lines, Line(""), Line("no runs yet", "dim")]
    rows = [
        [
            when(f.slot),
            f.outcome.value + (" (manual)" if f.manual else ""),
            f.job_id or "-",
            f.job_state.value if f.job_state else "-",
            f.reason or "",
        ]
        for f in s.recent
    ]
    table = table_lines(["SLOT", "OUTCOME", "JOB", "STATE", "REASON"], rows)
    return [*lines, Line(""), *table]


def cmd_show(args: argparse.Namespace) -> int:
    with api(args) as client:
        data = resolve(client, args.schedule)
    return reply(args, data, lambda: schedule_lines(SchedulePublic.model_validate(data)))


def _action(args: argparse.Namespace, verb: str, said: str) -> int:
    with api(args) as client:
        found = resolve(client, args.schedule)
        data = client.post(f"/v1/schedules/{found['id']}/{verb}")
    s = SchedulePublic.model_validate(data)
    nxt = f"; next fire {when(s.next_fire_at)}" if s.next_fire_at else ""
    return reply(args, data, lambda: [Line(f"schedule {s.name}: {said}{nxt}")])


def cmd_pause(args: argparse.Namespace) -> int:
    return _action(args, "pause", "paused")


def cmd_resume(args: argparse.Namespace) -> int:
    return _action(args, "resume", "resumed")


def cmd_run(args: argparse.Namespace) -> int:
    with api(args) as client:
        found = resolve(client, args.schedule)
        data = client.post(f"/v1/schedules/{found['id']}/run")
        s = SchedulePublic.model_validate(data)
        # The manual slot is now, so it is the newest manual one.
        fire = next((f for f in s.recent if f.manual), None)
        job_id = fire.job_id if fire else None
        if args.json:
            print_json(data)
            return 0 if job_id else 1
        if job_id is None:
            reason = fire.reason if fire and fire.reason else "no slot recorded"
            emit([Line(f"schedule {s.name}: not fired: {reason}", "bad")])
            return 1
        job = JobPublic.model_validate(client.get(f"/v1/jobs/{job_id}"))
    emit([Line(f"schedule {s.name}: fired job {job.id}"), *job_lines(job)])
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with api(args) as client:
        found = resolve(client, args.schedule)
        client.request("DELETE", f"/v1/schedules/{found['id']}")
    data = {"deleted": found["id"]}
    return reply(args, data, lambda: [Line(f"deleted schedule {found['name']}; its jobs are kept")])


# -- trend and compare -----------------------------------------------------------------------


def number(value: float | None) -> str:
    if value is None:
        return "-"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def sparkline(values: list[float | None]) -> str:
    """One character per run, scaled to the series' own range; '·' where there is no value."""
    known = [v for v in values if v is not None]
    if not known:
        return "·" * len(values)
    low, high = min(known), max(known)
    top = len(SPARKS) - 1
    out = []
    for v in values:
        if v is None:
            out.append("·")
        else:
            out.append(SPARKS[0 if high == low else round((v - low) / (high - low) * top)])
    return "".join(out)


def _columns(series: TrendSeries) -> dict[tuple[str, int], float | None]:
    """(job, n-th point of that job) -> value: a continuous job has a point per snapshot."""
    seen: dict[str, int] = {}
    cells: dict[tuple[str, int], float | None] = {}
    for point in series.points:
        n = seen[point.job_id] = seen.get(point.job_id, -1) + 1
        cells[(point.job_id, n)] = point.value
    return cells


def trend_lines(trend: ScheduleTrend, name: str) -> list[Line]:
    runs: dict[tuple[str, int], datetime] = {}
    for series in trend.series:
        slots = iter(p.slot for p in series.points)
        for column in _columns(series):
            runs.setdefault(column, next(slots))
    order = sorted(runs, key=lambda column: (runs[column], column[1]))
    unit = f" ({trend.unit})" if trend.unit else ""
    count = plural(len(order), "slot")
    title = Line(f"{trend.metric}{unit} for schedule {name}: {count}", "title")
    if not order:
        return [title, Line("no runs with results yet", "dim")]
    shown = order[-TREND_COLUMNS:]
    header = ["HOST", *(runs[j].astimezone().strftime("%m-%d %H:%M") for j in shown), "TREND"]
    rows = []
    for series in trend.series:
        by_column = _columns(series)
        values = [by_column.get(c) for c in order]
        cells = [number(by_column.get(c)) for c in shown]
        rows.append([series.host, *cells, sparkline(values)])
    right = [False, *([True] * len(shown)), False]
    lines = [title, *table_lines(header, rows, right=right)]
    if len(order) > len(shown):
        lines.append(Line(f"last {len(shown)} slots as numbers; TREND covers all", "dim"))
    return lines


def cmd_trend(args: argparse.Namespace) -> int:
    if args.output is not None and args.format != "html":
        raise CliError("-o/--output needs --format html")
    with api(args) as client:
        found = resolve(client, args.schedule)
        params: dict[str, Any] = {"metric": args.metric, "limit": args.limit}
        path = f"/v1/schedules/{found['id']}/trend"
        if args.format == "html":
            page = client.text(path, params | {"format": "html"})
        else:
            data = client.get(path, params=params)
    if args.format != "html":
        return reply(
            args, data, lambda: trend_lines(ScheduleTrend.model_validate(data), found["name"])
        )
    write_output(args.output, page)
    return 0


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"x{value:.3g}"


def compare_lines(report: CompareReport, name: str) -> list[Line]:
    lines = [Line(f"schedule {name}: job {report.base} -> job {report.other}", "title")]
    for host in report.hosts:
        lines.append(Line(""))
        if not (host.in_base and host.in_other):
            where = "base" if host.in_base else "other"
            lines.append(Line(f"{host.host}: only in the {where} run", "note"))
        else:
            lines.append(Line(host.host, "header"))
        rows = [
            [
                m.label,
                m.unit,
                number(m.base),
                number(m.other),
                number(m.delta),
                _ratio(m.ratio),
            ]
            for m in host.metrics
        ]
        header = ["METRIC", "UNIT", "BASE", "OTHER", "DELTA", "RATIO"]
        lines += table_lines(header, rows, right=[False, False, True, True, True, True])
    if not report.hosts:
        lines.append(Line("no host has results in either run", "dim"))
    return lines


def cmd_compare(args: argparse.Namespace) -> int:
    with api(args) as client:
        found = resolve(client, args.schedule)
        params = {}
        if args.runs:
            params = {"base_job": args.runs[0], "other_job": args.runs[1]}
        data = client.get(f"/v1/schedules/{found['id']}/compare", params=params)
    return reply(
        args, data, lambda: compare_lines(CompareReport.model_validate(data), found["name"])
    )
