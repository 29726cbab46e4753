"""A job's results: each host's latest cumulative snapshot, and the fleet merge."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controller.jobs.merge import merge_results
from controller.jobs.models import HostResult, Job, JobResults, JobState, SnapshotRow
from node_agent.protocol import Result, RunState, SnapshotStats

_RESULTS = TypeAdapter(list[Result])


def parse_results(raw: list[Any]) -> list[Result]:
    """A snapshot row's stored results, as models."""
    return _RESULTS.validate_python(raw)


def latest_snapshots(*, session: Session, job_id: str) -> dict[str, SnapshotRow]:
    newest = (
        select(SnapshotRow.run_id, func.max(SnapshotRow.seq).label("seq"))
        .where(SnapshotRow.job_id == job_id)
        .group_by(SnapshotRow.run_id)
        .subquery()
    )
    rows = session.scalars(
        select(SnapshotRow).join(
            newest, (SnapshotRow.run_id == newest.c.run_id) & (SnapshotRow.seq == newest.c.seq)
        )
    ).all()
    return {row.run_id: row for row in rows}


def job_results(*, session: Session, job: Job) -> JobResults:
    latest = latest_snapshots(session=session, job_id=job.id)
    hosts: list[HostResult] = []
    for run in job.runs:
        row = latest.get(run.id)
        results = parse_results(row.results) if row else []
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
