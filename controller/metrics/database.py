"""Fleet state read from the database at scrape time: a few GROUP BY counts, no row walked
in Python (the indexes on runs.state, jobs.state and hosts.last_heartbeat serve them)."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from controller.bootstrap.models import BootstrapRun
from controller.db import utcnow
from controller.hosts.models import Host
from controller.ingest.dead_letters import DeadLetter
from controller.jobs.models import Job, JobState, Run


def families(session: Session, *, heartbeat_timeout_s: float) -> list[Metric]:
    return [
        _runs(session),
        _jobs(session),
        _hosts(session, heartbeat_timeout_s),
        _bootstrap_runs(session),
        *_dead_letters(session),
    ]


def _runs(session: Session) -> Metric:
    metric = GaugeMetricFamily(
        "fleettrace_runs",
        "Stored runs (one per job and host) by state and program.",
        labels=("state", "program"),
    )
    query = (
        select(Run.state, Job.program, func.count())
        .join(Job, Job.id == Run.job_id)
        .group_by(Run.state, Job.program)
    )
    for state, program, n in sorted(session.execute(query).all()):
        metric.add_metric([state, program], n)
    return metric


def _jobs(session: Session) -> Metric:
    metric = GaugeMetricFamily("fleettrace_jobs", "Stored jobs by state.", labels=("state",))
    counts = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
    for state in JobState:  # every state, zeros included: alerts need the series to exist
        metric.add_metric([state.value], counts.get(state.value, 0))
    return metric


def _hosts(session: Session, timeout_s: float) -> Metric:
    metric = GaugeMetricFamily(
        "fleettrace_hosts",
        "Known hosts by state: online (heartbeat within the timeout), offline, never_seen.",
        labels=("state",),
    )
    since = utcnow() - timedelta(seconds=timeout_s)
    state = case(
        (Host.last_heartbeat.is_(None), "never_seen"),
        (Host.last_heartbeat >= since, "online"),
        else_="offline",
    )
    counts: dict[str, int] = dict(
        session.execute(select(state, func.count()).group_by(state)).all()
    )
    for name in ("online", "offline", "never_seen"):
        metric.add_metric([name], counts.get(name, 0))
    return metric


def _bootstrap_runs(session: Session) -> Metric:
    metric = GaugeMetricFamily(
        "fleettrace_bootstrap_runs",
        "Stored SSH bootstrap and uninstall runs by kind and outcome (state).",
        labels=("kind", "state"),
    )
    query = select(BootstrapRun.kind, BootstrapRun.state, func.count()).group_by(
        BootstrapRun.kind, BootstrapRun.state
    )
    for kind, state, n in sorted(session.execute(query).all()):
        metric.add_metric([kind, state], n)
    return metric


def _dead_letters(session: Session) -> list[Metric]:
    """Entries ingest could not store (the newest 10,000 are kept): their number, and when the
    newest came once there is one."""
    n, newest = session.execute(select(func.count(), func.max(DeadLetter.at))).one()
    count = GaugeMetricFamily(
        "fleettrace_ingest_dead_letters",
        "Stored dead letters: stream entries ingest could not store (`fleettrace ingest"
        " dead-letters` lists them).",
        value=n,
    )
    if newest is None:
        return [count]
    last = GaugeMetricFamily(
        "fleettrace_ingest_dead_letter_last_timestamp_seconds",
        "When the newest dead letter was kept (Unix time).",
        value=newest.timestamp(),
    )
    return [count, last]
