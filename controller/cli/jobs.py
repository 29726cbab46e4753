"""`fleettrace jobs submit|list|show|cancel|results`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from controller.cli import targets
from controller.cli.common import (
    api,
    command,
    kv,
    pair,
    positive,
    print_json,
    reply,
    script_lines,
    template_params,
)
from controller.cli.follow import FINAL_JOB_STATES, follow, settle
from controller.cli.http import ApiClient
from controller.cli.sidebyside import TOP, render_results
from controller.cli.text import (
    Line,
    Style,
    emit,
    plural,
    seconds,
    table_lines,
    terminal_width,
    when,
)
from controller.jobs.models import JobPublic, JobResults
from node_agent.arguments import add_script_options, add_trace_options

JOB_STATES = ("pending", "running", "succeeded", "partial", "failed", "cancelled")
# After a cancel, agents stop within about a second and send what they have.
CANCEL_SETTLE_S = 10.0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    jobs = sub.add_parser("jobs", help="run traces on hosts and read their results")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True)

    submit = command(jsub, "submit", cmd_submit, parents=[common], help="run a program on hosts")
    submit.add_argument("program", help="a catalog program (fleettrace-agent programs)")
    targets.add_options(submit)
    add_trace_options(submit)
    submit.add_argument("--param", type=pair, action="append", default=[], metavar="K=V")
    add_script_options(submit)
    submit.add_argument("--wait", action="store_true", help="follow it, then show the results")
    submit.add_argument("--top", type=positive, default=TOP, help="rows per result (--wait)")

    listing = command(jsub, "list", cmd_list, parents=[common], help="jobs, newest first")
    listing.add_argument("--state", choices=JOB_STATES)
    listing.add_argument("--program")
    listing.add_argument("--host", help="jobs that ran on this host")
    listing.add_argument("--limit", type=positive, default=20)

    for name, func, help_text in (
        ("show", cmd_show, "a job and its run on each host"),
        ("cancel", cmd_cancel, "stop a job, keep its results"),
    ):
        command(jsub, name, func, parents=[common], help=help_text).add_argument("id")

    results = command(
        jsub, "results", cmd_results, parents=[common], help="results, hosts side by side"
    )
    results.add_argument("id")
    results.add_argument("--top", type=positive, default=TOP, help="rows per result")


def job_body(args: argparse.Namespace) -> dict[str, Any]:
    scope = {"cgroup": args.cgroup, "pid": args.pid, "comm": args.comm}
    return {
        "program": args.program,
        "params": template_params(args),
        "scope": {k: v for k, v in scope.items() if v is not None},
        "duration_s": args.duration,
        "interval_s": args.interval,
        "targets": targets.body(args),
    }


def cmd_submit(args: argparse.Namespace) -> int:
    with api(args) as client:
        job: dict[str, Any] = client.post("/v1/jobs", job_body(args))
        if not args.wait:
            if args.json:
                print_json(job)
            else:
                emit(submitted_lines(JobPublic.model_validate(job)))
            return 0
        try:
            state = follow(client, job).state
        except KeyboardInterrupt:
            sys.stderr.write(
                f"fleettrace: interrupted: cancelling job {job['id']}, keeping what it gathered\n"
            )
            client.post(f"/v1/jobs/{job['id']}/cancel")
            state = settle(client, job["id"], timeout_s=CANCEL_SETTLE_S)["state"]
        show_results(client, job["id"], top=args.top, as_json=args.json)
    return 0 if state == "succeeded" else 1


def submitted_lines(job: JobPublic) -> list[Line]:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(job.counts.items()))
    return [
        Line(
            f"submitted job {job.id}: {job.program} on {plural(len(job.runs), 'host')} ({counts})"
        ),
        Line(f"progress: fleettrace jobs show {job.id}", "dim"),
        Line(f"results:  fleettrace jobs results {job.id}", "dim"),
    ]


def show_results(client: ApiClient, job_id: str, *, top: int, as_json: bool) -> None:
    data = client.get(f"/v1/jobs/{job_id}/results")
    if as_json:
        print_json(data)
        return
    job = JobPublic.model_validate(client.get(f"/v1/jobs/{job_id}"))
    results = JobResults.model_validate(data)
    emit(render_results(results, runs=job.runs, top=top, width=terminal_width()))


def cmd_results(args: argparse.Namespace) -> int:
    with api(args) as client:
        show_results(client, args.id, top=args.top, as_json=args.json)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    params = {"state": args.state, "program": args.program, "host": args.host}
    query = {k: v for k, v in params.items() if v is not None} | {"limit": args.limit}
    with api(args) as client:
        data = client.get("/v1/jobs", params=query)
    return reply(args, data, lambda: jobs_lines(data))


def jobs_lines(data: dict[str, Any]) -> list[Line]:
    jobs = [JobPublic.model_validate(j) for j in data["data"]]
    if not jobs:
        return [Line("no jobs", "dim")]
    rows = [
        [
            j.id,
            j.program,
            j.state.value,
            f"{j.counts.get('succeeded', 0)}/{len(j.runs)}",
            when(j.created_at),
            seconds(j.duration_s),
            j.created_by or "-",
        ]
        for j in jobs
    ]
    header = ["ID", "PROGRAM", "STATE", "OK/HOSTS", "CREATED", "DURATION", "BY"]
    footer = f"{len(jobs)} of {data['count']} jobs" + (
        " (--limit for more)" if data["count"] > len(jobs) else ""
    )
    return [*table_lines(header, rows, right=[False] * 3 + [True]), Line(footer, "dim")]


def cmd_show(args: argparse.Namespace) -> int:
    with api(args) as client:
        data = client.get(f"/v1/jobs/{args.id}")
    return reply(args, data, lambda: job_lines(JobPublic.model_validate(data)))


def job_lines(job: JobPublic) -> list[Line]:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(job.counts.items()))
    every = f", a snapshot every {seconds(job.interval_s)}" if job.interval_s else ""
    params, script = script_lines(job.params, 10)
    fields = [
        ("program", job.program),
        ("state", f"{job.state.value} ({counts})"),
        ("params", kv(params) or "-"),
        ("scope", kv(job.scope.model_dump(exclude_none=True)) or "-"),
        ("targets", targets.text(job.targets.model_dump(exclude_none=True))),
        ("duration", seconds(job.duration_s) + every),
        ("created", f"{when(job.created_at)} by {job.created_by or '-'}"),
        ("finished", when(job.finished_at)),
    ]
    lines = [Line(f"job {job.id}", "title")]
    lines += [Line(f"{k + ':':<10}{v}") for k, v in fields]
    lines[4:4] = script  # after params
    rows = []
    for run in job.runs:
        note = run.reason or ""
        if run.error:
            note = f"{run.error.get('code', 'error')}: {run.error.get('message', '')}"
        started = run.started_at.astimezone().strftime("%H:%M:%S") if run.started_at else "-"
        ended = run.finished_at.astimezone().strftime("%H:%M:%S") if run.finished_at else "-"
        rows.append([run.host, run.state.value, str(run.snapshots), started, ended, note])
    header = ["HOST", "STATE", "SNAPSHOTS", "STARTED", "FINISHED", "REASON"]
    bad = {"failed", "timed_out", "expired", "unsupported"}
    styles: list[Style] = ["bad" if run.state.value in bad else "" for run in job.runs]
    table = table_lines(header, rows, right=[False, False, True], styles=styles)
    return [*lines, Line(""), *table]


def cmd_cancel(args: argparse.Namespace) -> int:
    with api(args) as client:
        data = client.post(f"/v1/jobs/{args.id}/cancel")
    return reply(args, data, lambda: _cancelled_lines(JobPublic.model_validate(data)))


def _cancelled_lines(job: JobPublic) -> list[Line]:
    still = "" if job.state.value in FINAL_JOB_STATES else "; running hosts stop within a second"
    return [Line(f"job {job.id}: cancel requested, now {job.state.value}{still}")]
