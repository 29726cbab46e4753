"""Following bootstrap runs to their end: per-host, per-step progress by polling the API."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from controller.cli.http import ApiClient
from controller.cli.text import redrawn
from node_agent.safe_text import printable

POLL_S = 0.5
FINAL = frozenset({"succeeded", "failed", "cancelled"})
STYLES = {
    "pending": "dim",
    "running": "yellow",
    "succeeded": "green",
    "ok": "green",
    "changed": "cyan",
    "skipped": "dim",
    "failed": "red",
    "cancelled": "magenta",
}
FAILURE_LINES = 12


def _step_line(host: str, step: dict[str, Any]) -> str:
    duration = step.get("duration_s")
    took = f" ({duration:.1f}s)" if isinstance(duration, int | float) else ""
    return f"{host}: {step['name']} {step['status']}{took}"


class Watch:
    """What the display shows: each host's run as last seen; new lines for what changed."""

    def __init__(self, runs: dict[str, dict[str, Any]], clock: Callable[[], float]) -> None:
        self.clock = clock
        self.started = clock()
        self.runs = dict(runs)
        self.ids = {host: str(run["id"]) for host, run in runs.items()}
        self.seen: dict[tuple[str, str], str] = {}
        self.lost: set[str] = set()

    @property
    def done(self) -> bool:
        return all(h in self.lost or r["state"] in FINAL for h, r in self.runs.items())

    def pending_hosts(self) -> list[str]:
        return [h for h, r in self.runs.items() if h not in self.lost and r["state"] not in FINAL]

    def apply(self, host: str, run: dict[str, Any]) -> list[str]:
        """Take a polled run; returns lines for steps that changed and for the run's end."""
        if str(run["id"]) != self.ids[host]:
            self.lost.add(host)
            return [f"{host}: another run ({run['kind']} {run['id']}) replaced ours"]
        before = self.runs[host]["state"]
        self.runs[host] = run
        lines = []
        for step in run["steps"]:
            key = (host, str(step["name"]))
            if self.seen.get(key) != step["status"] and step["status"] not in ("pending",):
                self.seen[key] = str(step["status"])
                if step["status"] != "running":
                    lines.append(_step_line(host, step))
        if run["state"] != before and run["state"] in FINAL:
            end = f"{host}: {run['kind']} {run['state']}"
            if run.get("error"):
                end += f": {run['error']}"
            elif run.get("agent_version"):
                end += f" (agent {run['agent_version']})"
            lines.append(end)
        return lines

    def failures(self) -> list[str]:
        """The tail of each failed step's output, for after the live display."""
        out = []
        for host, run in sorted(self.runs.items()):
            for step in run["steps"]:
                if step["status"] == "failed" and step.get("output"):
                    out.append(f"--- {host}: {step['name']} output (tail)")
                    out += str(step["output"]).splitlines()[-FAILURE_LINES:]
        return out

    def __rich__(self) -> Group:
        now = self.clock()
        title = Text(f"bootstrap: {now - self.started:.0f}s", style="bold")
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for name in ("HOST", "STATE", "STEP", "DONE", "NOTE"):
            table.add_column(name)
        for host, run in sorted(self.runs.items()):
            steps = run["steps"]
            current = next(
                (s for s in steps if s["status"] in ("running", "failed")),
                next((s for s in steps if s["status"] == "pending"), None),
            )
            finished = sum(s["status"] in ("ok", "changed") for s in steps)
            name = printable(str(current["name"])) if current else ""
            step = Text(name, style=STYLES.get(current["status"], "")) if current else ""
            # Text, not str: a str cell is read as rich markup, and errors quote remote output.
            table.add_row(
                Text(printable(host)),
                Text(printable(str(run["state"])), style=STYLES.get(run["state"], "")),
                step,
                f"{finished}/{len(steps)}",
                Text(printable(str(run.get("error") or ""))),
            )
        return Group(title, table)


def watch(
    api: ApiClient,
    runs: dict[str, dict[str, Any]],
    *,
    stream: TextIO | None = None,
    live: bool | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Watch:
    """Poll each host's latest run until all of ours end; a live table on a terminal."""
    stream = stream or sys.stderr
    state = Watch(runs, clock)
    live = stream.isatty() if live is None else live
    with redrawn(state, stream, live):
        while True:
            for host in state.pending_hosts():
                for line in state.apply(host, api.get(f"/v1/hosts/{host}/bootstrap")):
                    if not live:
                        stream.write(printable(line) + "\n")
                        stream.flush()
            if state.done:
                break
            sleep(POLL_S)
    for line in state.failures():
        stream.write(printable(line) + "\n")
    return state
