"""Continuous schedules: one long job per horizon, one slot per snapshot.

The program stays loaded for the template's duration (the horizon) and the agent snapshots it
every `interval_s`; snapshots are cumulative, so a slot's numbers are the difference between
its snapshot and the one before.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.jobs.models import SnapshotRow
from controller.jobs.results import parse_results
from node_agent.kinds import Result, kind_of


def first_slot(created_at: datetime, interval_s: float) -> datetime:
    """Fire the first horizon one interval after creation, not a whole horizon later."""
    return created_at + timedelta(seconds=interval_s)


def delta(current: list[Result], previous: list[Result] | None) -> list[Result]:
    """What happened between two cumulative snapshots of one run, series by series (each
    kind says what its delta is)."""
    if previous is None:
        return list(current)
    before = {(r.kind, kind_of(r).series(r)): r for r in previous}
    return [kind_of(r).delta(r, before.get((r.kind, kind_of(r).series(r)))) for r in current]


@dataclass(frozen=True)
class Slot:
    run_id: str
    host: str
    at: datetime
    span_s: float
    results: list[Result]


def slots(*, session: Session, job_id: str) -> list[Slot]:
    """Every snapshot of a job as a slot with its own numbers, in order per run."""
    rows = session.scalars(
        select(SnapshotRow)
        .where(SnapshotRow.job_id == job_id)
        .order_by(SnapshotRow.run_id, SnapshotRow.seq)
    ).all()
    out: list[Slot] = []
    previous: dict[str, list[Result]] = {}
    for row in rows:
        results = parse_results(row.results)
        out.append(
            Slot(
                run_id=row.run_id,
                host=row.host_name,
                at=datetime.fromtimestamp(row.interval_end, timezone.utc),
                span_s=row.interval_end - row.interval_start,
                results=delta(results, previous.get(row.run_id)),
            )
        )
        previous[row.run_id] = results
    return out
