"""Following a job to its end: per-host progress from the SSE stream, polling if that fails."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from rich import box
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from controller.cli.errors import CliError
from controller.cli.http import ApiClient, SseEvent
from controller.cli.text import age, redrawn
from node_agent.safe_text import printable

POLL_S = 1.0
FINAL_JOB_STATES = frozenset({"succeeded", "partial", "failed", "cancelled"})
STATE_STYLES = {
    "pending": "dim",
    "running": "yellow",
    "succeeded": "green",
    "partial": "yellow",
    "cancelled": "magenta",
}
BAD_STATES = frozenset({"failed", "timed_out", "expired", "unsupported"})


@dataclass
class HostProgress:
    state: str
    snapshots: int = 0
    updated: float | None = None
    note: str = ""


def _note(payload: dict[str, Any]) -> str:
    error = payload.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return str(payload.get("reason") or "")


class Progress:
    """What the display shows, fed by SSE events or by polled job documents."""

    def __init__(self, job: dict[str, Any], clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.job_id = str(job["id"])
        self.program = str(job["program"])
        self.duration_s = float(job["duration_s"])
        self.state = str(job["state"])
        self.started = clock()
        self.ended = False
        self.hosts = {
            str(run["host"]): HostProgress(
                state=str(run["state"]), snapshots=int(run.get("snapshots", 0)), note=_note(run)
            )
            for run in job["runs"]
        }

    @property
    def done(self) -> bool:
        return self.ended or self.state in FINAL_JOB_STATES

    def _host(self, name: str) -> HostProgress:
        return self.hosts.setdefault(name, HostProgress(state="pending"))

    def apply(self, event: SseEvent) -> str | None:
        """Take one SSE event; returns a line worth logging when something changed state."""
        data = event.data if isinstance(event.data, dict) else {}
        if event.event == "end":
            self.ended = True
            return None
        if event.event == "job":
            self.state = str(data.get("state", self.state))
            return f"job {self.job_id}: {self.state}"
        host_name = data.get("host")
        if not isinstance(host_name, str):
            return None
        host = self._host(host_name)
        host.updated = self.clock()
        if event.event == "snapshot":
            host.snapshots = max(host.snapshots, int(data.get("seq", -1)) + 1)
            return f"{host_name}: final snapshot" if data.get("final") else None
        if event.event == "state":
            host.state = str(data.get("state", host.state))
            host.note = _note(data)
            return f"{host_name}: {host.state}" + (f" ({host.note})" if host.note else "")
        return None

    def apply_job(self, job: dict[str, Any]) -> list[str]:
        """Take a polled job document; returns lines for what changed since the last look."""
        lines = []
        for run in job.get("runs", []):
            host = self._host(str(run["host"]))
            snapshots = int(run.get("snapshots", 0))
            if run["state"] != host.state or snapshots != host.snapshots:
                host.updated = self.clock()
            if run["state"] != host.state:
                host.state, host.note = str(run["state"]), _note(run)
                lines.append(
                    f"{run['host']}: {host.state}" + (f" ({host.note})" if host.note else "")
                )
            host.snapshots = max(host.snapshots, snapshots)
        if job.get("state") != self.state:
            self.state = str(job["state"])
            lines.append(f"job {self.job_id}: {self.state}")
        return lines

    @property
    def shown_state(self) -> str:
        # The job's own state only changes at its end; its runs say whether it started.
        if self.state == "pending" and any(h.state == "running" for h in self.hosts.values()):
            return "running"
        return self.state

    def __rich__(self) -> Group:
        now = self.clock()
        title = Text.assemble(
            (f"{self.program} job {self.job_id}: ", "bold"),
            (self.shown_state, STATE_STYLES.get(self.shown_state, "")),
            f"  {now - self.started:.0f}s of {self.duration_s:g}s  (Ctrl-C cancels)",
        )
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for name in ("HOST", "STATE", "SNAPSHOTS", "LAST UPDATE", "NOTE"):
            table.add_column(name, justify="right" if name == "SNAPSHOTS" else "left")
        for name, host in sorted(self.hosts.items()):
            style = "red" if host.state in BAD_STATES else STATE_STYLES.get(host.state, "")
            updated = "-" if host.updated is None else f"{age(now - host.updated)} ago"
            state = Text(host.state, style=style)
            # Text, not str: a str cell is read as rich markup, and names come from hosts.
            table.add_row(
                Text(printable(name)),
                state,
                str(host.snapshots),
                updated,
                Text(printable(host.note)),
            )
        return Group(title, table)


def follow(
    api: ApiClient,
    job: dict[str, Any],
    *,
    stream: TextIO | None = None,
    live: bool | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Progress:
    """Wait for a job to end, showing progress on `stream` (a live table on a terminal)."""
    stream = stream or sys.stderr
    progress = Progress(job)
    live = stream.isatty() if live is None else live
    with redrawn(progress, stream, live) as shown:

        def report(line: str) -> None:
            line = printable(line)
            if isinstance(shown, Live):
                shown.console.print(Text(line), highlight=False)
            else:
                stream.write(line + "\n")
                stream.flush()

        try:
            for event in api.events(progress.job_id):
                line = progress.apply(event)
                if line and not live:
                    report(line)
                if progress.ended:
                    break
        except CliError as exc:
            report(f"fleettrace: live events unavailable ({exc}); polling instead")
        while not progress.done:
            for line in progress.apply_job(api.get(f"/v1/jobs/{progress.job_id}")):
                if not live:
                    report(line)
            if not progress.done:
                sleep(POLL_S)
    return progress


def settle(
    api: ApiClient,
    job_id: str,
    *,
    timeout_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll a job until it is final or `timeout_s` passes (after a cancel: runs stop quickly)."""
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = api.get(f"/v1/jobs/{job_id}")
        if job["state"] in FINAL_JOB_STATES or time.monotonic() >= deadline:
            return job
        sleep(min(POLL_S / 4, max(0.0, deadline - time.monotonic())))
