"""Each host's agent cost and record as Prometheus families, for the controller's /metrics.

Values are the latest heartbeat's, kept while the host is offline:
`fleettrace_agent_last_heartbeat_timestamp_seconds` says how old they are. Counters restart
from zero with the agent (Prometheus' rate() takes that as a reset).
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.hosts.models import Host
from controller.hosts.service import agent_stats

LABELS = ["host"]


def agent_families(session: Session) -> list[Metric]:
    """One family per agent figure, one sample per host that reported it."""
    rss = GaugeMetricFamily(
        "fleettrace_agent_resident_memory_bytes",
        "Resident memory of all the agent's processes (worker and descendants).",
        labels=LABELS,
    )
    pss = GaugeMetricFamily(
        "fleettrace_agent_proportional_memory_bytes",
        "Proportional set size of all the agent's processes (shared pages divided).",
        labels=LABELS,
    )
    cpu = CounterMetricFamily(
        "fleettrace_agent_cpu_seconds_total",
        "User and system CPU of the agent's processes since it started, exited ones included.",
        labels=LABELS,
    )
    loaded = GaugeMetricFamily(
        "fleettrace_agent_programs_loaded", "Traces the agent runs now.", labels=LABELS
    )
    run = CounterMetricFamily(
        "fleettrace_agent_traces_run_total",
        "Traces the agent ended since it started.",
        labels=LABELS,
    )
    failed = CounterMetricFamily(
        "fleettrace_agent_traces_failed_total",
        "Traces that ended failed, timed out or unsupported since the agent started.",
        labels=LABELS,
    )
    error_at = GaugeMetricFamily(
        "fleettrace_agent_last_error_timestamp_seconds",
        "When the agent's last failed trace ended (Unix time).",
        labels=LABELS,
    )
    beat_at = GaugeMetricFamily(
        "fleettrace_agent_last_heartbeat_timestamp_seconds",
        "When the controller last heard the agent's heartbeat (Unix time).",
        labels=LABELS,
    )
    for host in session.scalars(select(Host).order_by(Host.name)):
        label = [host.name]
        if host.last_heartbeat is not None:
            beat_at.add_metric(label, host.last_heartbeat.timestamp())
        stats = agent_stats(host)
        if stats is None:
            continue
        rss.add_metric(label, stats.rss_bytes)
        if stats.pss_bytes is not None:
            pss.add_metric(label, stats.pss_bytes)
        cpu.add_metric(label, stats.cpu_seconds_total)
        loaded.add_metric(label, stats.programs_loaded)
        run.add_metric(label, stats.traces_run_total)
        failed.add_metric(label, stats.traces_failed_total)
        if stats.last_error_at is not None:
            error_at.add_metric(label, stats.last_error_at.timestamp())
    return [rss, pss, cpu, loaded, run, failed, error_at, beat_at]
