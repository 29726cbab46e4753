"""The fleet: every host, whether it answers, and what it can trace; one host in full."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from markupsafe import Markup

from controller.api.deps import SessionDep, SettingsDep
from controller.api.resources import HostDep
from controller.bootstrap import service as bootstrap
from controller.console import format as fmt
from controller.console.web import VisitorDep, page
from controller.db import utcnow
from controller.errors import InvalidRequest
from controller.hosts import agent_view
from controller.hosts import service as hosts
from controller.hosts.models import Host, HostState
from controller.jobs import service as jobs
from node_agent.programs import catalog

router = APIRouter(include_in_schema=False)

STATES: tuple[HostState, ...] = ("online", "offline", "never_seen")
SHORT = 32
RECENT_JOBS = 20


@dataclass(frozen=True)
class Cell:
    """One host and program: `yes`, or why not in a few words (the whole reason in `why`)."""

    word: str
    why: str
    ok: bool


def short_reason(reason: str, program: str) -> str:
    """'runqlat needs tracepoint sched:sched_wakeup, missing on this kernel' -> 'needs
    tracepoint sched:sched_wakeup': the words that fit a matrix cell."""
    text = reason.removeprefix(f"{program} ")
    text = re.split(r"[,;(]|: ", text, maxsplit=1)[0].strip() or reason
    return text if len(text) <= SHORT else text[: SHORT - 1] + "…"


def support(host: Host, program: str) -> Cell:
    """What the host's capability probe says, judged as job dispatch judges it."""
    if not host.capabilities:
        return Cell("not probed", "no heartbeat with a capability probe yet", False)
    reason = jobs.unsupported_reason(host, program)
    if reason is None:
        return Cell("yes", f"can run {program}", True)
    return Cell(short_reason(reason, program), reason, False)


def parse_selector(raw: str) -> tuple[dict[str, str], str | None]:
    """'k=v,k2=v2' as the API reads `selector`: (the selector, or {} and the API's message)."""
    items = [item.strip() for item in raw.split(",") if item.strip()]
    try:
        return hosts.parse_selector(items), None
    except InvalidRequest as exc:
        return {}, exc.message


def kernel(caps: dict[str, Any] | None) -> str:
    caps = caps or {}
    return f"{caps.get('kernel_release') or '—'} {caps.get('arch') or ''}".strip()


def probe_key(caps: dict[str, Any] | None) -> str:
    """What a host's matrix row depends on: hosts with the same probe share one row."""
    if not caps:
        return ""
    return json.dumps([caps.get("programs"), caps.get("features")], sort_keys=True, default=str)


CELL = Markup('<td data-program="{}" class="{}" title="{}">{}</td>')


def matrix_cells(found: Sequence[Host], programs: Sequence[str]) -> list[Markup]:
    """Each host's matrix cells, escaped, worked out once per distinct probe: a fleet is a few
    kinds of machine, and 1,000 hosts x 10 programs is too many cells to template one by one."""
    made: dict[str, Markup] = {}
    rows = []
    for host in found:
        key = probe_key(host.capabilities)
        if key not in made:
            cells = ((p, support(host, p)) for p in programs)
            made[key] = Markup("").join(
                CELL.format(p, "can" if c.ok else "cannot", c.why, c.word) for p, c in cells
            )
        rows.append(made[key])
    return rows


def probed_at(caps: dict[str, Any] | None) -> datetime | None:
    """When the agent last probed (epoch seconds in the probe); None if unknown or garbled."""
    try:
        return datetime.fromtimestamp(float((caps or {})["probed_at"]), timezone.utc)
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        return None


@dataclass(frozen=True)
class Row:
    host: Host
    state: HostState
    kernel: str
    cells: Markup

    @property
    def href(self) -> str:
        # quote(), not Jinja's urlencode filter: a tenth of the cost on a 1,000-row page.
        return "/hosts/" + quote(self.host.name, safe="")


@router.get("/fleet")
def fleet(
    request: Request,
    who: VisitorDep,
    session: SessionDep,
    settings: SettingsDep,
    selector: str = Query(default="", max_length=512),
) -> Response:
    chosen, error = parse_selector(selector)
    found = hosts.list_hosts(session=session, selector=chosen)
    programs = list(catalog())
    now = utcnow()
    rows = [
        Row(
            h,
            hosts.state(h, timeout_s=settings.heartbeat_timeout_s, now=now),
            kernel(h.capabilities),
            cells,
        )
        for h, cells in zip(found, matrix_cells(found, programs), strict=True)
    ]
    counts = Counter(row.state for row in rows)
    return page(
        request,
        "fleet.html",
        who,
        rows=rows,
        programs=programs,
        counts=[(state, counts[state]) for state in STATES],
        selector=selector,
        selector_error=error,
    )


@router.get("/hosts/{name}")
def host_page(
    request: Request, who: VisitorDep, session: SessionDep, settings: SettingsDep, host: HostDep
) -> Response:
    public = hosts.to_public(host, timeout_s=settings.heartbeat_timeout_s)
    recent, total = jobs.list_jobs(session=session, host=host.name, limit=RECENT_JOBS)
    runs = [(job, next((r for r in job.runs if r.host_name == host.name), None)) for job in recent]
    return page(
        request,
        "host.html",
        who,
        host=public,
        agent=agent_view.facts(public.agent_stats, now=utcnow(), moment=_moment),
        kernel=kernel(host.capabilities),
        probed_at=probed_at(host.capabilities),
        programs=list(catalog()),
        cells=matrix_cells([host], list(catalog()))[0],
        jobs=runs,
        jobs_total=total,
        bootstrap=bootstrap.latest_run(session=session, host_name=host.name),
    )


def _moment(at: datetime) -> str:
    return f"{fmt.utc(at)}, {fmt.ago(at)}"
