"""A job's results: each host's latest cumulative snapshot, and the fleet merge."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import ColumnElement, Subquery, Text, cast, func, select
from sqlalchemy.orm import Session, defer

from controller.jobs.merge import merge_results
from controller.jobs.models import HostResult, Job, JobResults, JobState, SnapshotRow
from node_agent.protocol import Result, RunState, SnapshotStats

_RESULTS = TypeAdapter(list[Result])


def parse_results(raw: list[Any]) -> list[Result]:
    """A snapshot row's stored results, as models."""
    return _RESULTS.validate_python(raw)


def newest(job_id: str) -> Subquery:
    """(run_id, seq) of each run's last snapshot in a job; join it with on_newest()."""
    return (
        select(SnapshotRow.run_id, func.max(SnapshotRow.seq).label("seq"))
        .where(SnapshotRow.job_id == job_id)
        .group_by(SnapshotRow.run_id)
        .subquery()
    )


def on_newest(last: Subquery) -> ColumnElement[bool]:
    return (SnapshotRow.run_id == last.c.run_id) & (SnapshotRow.seq == last.c.seq)


def latest_snapshots(*, session: Session, job_id: str) -> dict[str, SnapshotRow]:
    last = newest(job_id)
    rows = session.scalars(select(SnapshotRow).join(last, on_newest(last))).all()
    return {row.run_id: row for row in rows}


def _latest_results(*, session: Session, job_id: str) -> dict[str, tuple[SnapshotRow, str]]:
    """latest_snapshots() without their results loaded, and each one's results as JSON text:
    parsed and validated by pydantic in one pass (1,000 hosts: half the time of json.loads
    followed by validation)."""
    last = newest(job_id)
    query = (
        select(SnapshotRow, cast(SnapshotRow.results, Text))
        .join(last, on_newest(last))
        .options(defer(SnapshotRow.results))
    )
    return {row.run_id: (row, text) for row, text in session.execute(query)}


def job_results(*, session: Session, job: Job) -> JobResults:
    latest = _latest_results(session=session, job_id=job.id)
    hosts: list[HostResult] = []
    for run in job.runs:
        found = latest.get(run.id)
        row = found[0] if found else None
        results = _RESULTS.validate_json(found[1]) if found else []
        hosts.append(
            HostResult(
                host=run.host_name,
                run_id=run.id,
                state=RunState(run.state),
                seq=row.seq if row else None,
                final=row.final if row else False,
                interval_start=row.interval_start if row else None,
                interval_end=row.interval_end if row else None,
                results=results,
                stats=SnapshotStats.model_validate(row.stats) if row else None,
            )
        )
    merged = merge_results([(h.host, h.results) for h in hosts if h.results])
    return JobResults(
        job_id=job.id, program=job.program, state=JobState(job.state), hosts=hosts, merged=merged
    )
