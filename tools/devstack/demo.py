"""The README's first command: a local fleet, a real trace on every host, results side by side
and a report (outliers first; an HTML page per job)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devstack.config import StackConfig
from devstack.render import show
from devstack.stack import Stack
from devstack.workload import MODES

log = logging.getLogger(__name__)

# Run-queue latency and syscalls of each host's workload: every agent confines its traces to
# its host's cgroup, so one histogram per host is already per host cgroup.
DEMO_JOBS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("runqlat", {"per": "none", "unit": "usec"}),
    ("syscalls", {"per_process": False}),
)


def run_demo(
    config: StackConfig,
    *,
    keep: bool = False,
    duration_s: float = 5.0,
    report_dir: Path | None = None,
    out: Callable[[str], None],
    progress: Callable[[str], None] = log.info,
) -> int:
    """Up, trace every host, print the results and the report's outliers (each job's HTML
    report saved in `report_dir`), down (unless `keep`); 0 when every run succeeded."""
    started = time.monotonic()
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(config, progress=progress)
    stack.up()
    out(fleet_text(config))
    code = 0
    try:
        api = stack.api
        try:
            jobs = [api.submit(program, params, duration_s) for program, params in DEMO_JOBS]
            progress(
                f"tracing {', '.join(p for p, _ in DEMO_JOBS)} on "
                f"{len(config.hosts)} hosts for {duration_s:g}s"
            )
            for job in jobs:
                final = api.wait_job(job["id"], timeout_s=duration_s + 120)
                stack.check()
                show(final, api.results(job["id"]))
                out(report_text(api.report(job["id"])))
                if report_dir is not None:
                    page = report_dir / f"report-{final['program']}.html"
                    page.write_text(api.report_html(job["id"]), encoding="utf-8")
                    out(f"  full report: {page}")
                out("")
                if final["state"] != "succeeded":
                    code = 1
        finally:
            api.close()
    finally:
        if keep:
            progress(
                f"left running: . {config.env_file} for the client commands; "
                f"`fleettrace dev status`, `fleettrace dev down` when done"
            )
        else:
            stack.down()
    progress(f"demo done in {time.monotonic() - started:.1f}s")
    return code


def report_text(report: dict[str, Any], limit: int = 5) -> str:
    """The report's ranked outlier sentences (and hosts without results), indented."""
    outliers = report.get("outliers", [])
    lines = ["report: outliers, strongest first" if outliers else "report: no outliers"]
    lines += [f"  {o['sentence']}" for o in outliers[:limit]]
    if len(outliers) > limit:
        lines.append(f"  ... {len(outliers) - limit} more")
    lines += [f"  missing {m['host']}: {m['state']} {m['reason'] or ''}" for m in report["missing"]]
    return "\n".join(lines)


def fleet_text(config: StackConfig) -> str:
    """Who is who: the hosts, their labels and addresses, and what each one runs."""
    lines = [f"local fleet: {len(config.hosts)} hosts, each its own namespaces and cgroup"]
    for index, host in enumerate(config.hosts):
        labels = ",".join(f"{k}={v}" for k, v in host.labels.items())
        address = config.addresses(index)[1]
        lines.append(f"  {host.name:<8} {labels:<10} {address:<13} {MODES[host.workload]}")
    return "\n".join(lines) + "\n"
