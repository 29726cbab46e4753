"""An agent's own stats in words, for `fleettrace hosts show` and the console's host page."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from node_agent.protocol import AgentStats

MIB = 1024 * 1024
NO_STATS = "not reported (an agent from before its stats, or stats it sent were refused)"


def mib(value: int) -> str:
    return f"{value / MIB:,.1f} MiB"


def memory_text(stats: AgentStats) -> str:
    pss = "" if stats.pss_bytes is None else f", {mib(stats.pss_bytes)} proportional"
    return f"{mib(stats.rss_bytes)} resident{pss} (all its processes)"


def cpu_text(stats: AgentStats, *, now: datetime) -> str:
    """Cumulative CPU, and what it averages to since the agent started."""
    text = f"{stats.cpu_seconds_total:,.2f} s"
    up_s = (now - stats.started_at).total_seconds()
    if up_s > 0:
        text += f" ({100 * stats.cpu_seconds_total / up_s:.2f} % of one CPU since start)"
    return text


def traces_text(stats: AgentStats) -> str:
    return (
        f"{stats.programs_loaded} running; {stats.traces_run_total:,} run,"
        f" {stats.traces_failed_total:,} failed"
    )


def facts(
    stats: AgentStats | None, *, now: datetime, moment: Callable[[datetime], str]
) -> list[tuple[str, str]]:
    """(label, text) pairs; `moment` writes a time as the caller's medium does."""
    if stats is None:
        return [("agent stats", NO_STATS)]
    error = "none"
    if stats.last_error is not None:
        at = f" (at {moment(stats.last_error_at)})" if stats.last_error_at else ""
        error = stats.last_error + at
    return [
        ("agent memory", memory_text(stats)),
        ("agent CPU", cpu_text(stats, now=now)),
        ("agent started", moment(stats.started_at)),
        ("traces", traces_text(stats)),
        ("last error", error),
    ]
