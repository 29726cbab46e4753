"""Continuous schedules: one long job per horizon, one slot per snapshot.

The program stays loaded for the template's duration (the horizon) and the agent snapshots it
every `interval_s`; snapshots are cumulative, so a slot's numbers are the difference between
its snapshot and the one before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.jobs.models import SnapshotRow
from controller.jobs.results import parse_results
from node_agent.protocol import CounterTable, Log2Histogram, Result


def first_slot(created_at: datetime, interval_s: float) -> datetime:
    """Fire the first horizon one interval after creation, not a whole horizon later."""
    return created_at + timedelta(seconds=interval_s)


def _hist_key(hist: Log2Histogram) -> tuple[str, str]:
    return hist.name, json.dumps(hist.labels, sort_keys=True, default=str)


def _row_key(keys: list[object]) -> str:
    return json.dumps(keys, default=str)


def delta(current: list[Result], previous: list[Result] | None) -> list[Result]:
    """What happened between two cumulative snapshots of one run.

    Negative differences are clamped to 0: a key cut by max_rows in the earlier snapshot
    reappears with its full count, which we cannot tell apart (table.truncated says so).
    """
    if previous is None:
        return list(current)
    hists = {_hist_key(r): r for r in previous if isinstance(r, Log2Histogram)}
    tables = {r.name: r for r in previous if isinstance(r, CounterTable)}
    out: list[Result] = []
    for result in current:
        if isinstance(result, Log2Histogram):
            before = dict(hists[_hist_key(result)].buckets) if _hist_key(result) in hists else {}
            buckets = [(s, c - before.get(s, 0)) for s, c in result.buckets]
            kept = [(s, c) for s, c in buckets if c > 0]
            out.append(result.model_copy(update={"buckets": kept}))
        elif isinstance(result, CounterTable):
            old = tables.get(result.name)
            rows_before = {_row_key(list(k)): v for k, v in old.rows} if old else {}
            rows = []
            for keys, values in result.rows:
                prior = rows_before.get(_row_key(list(keys)), [0] * len(values))
                diff = [max(0, v - p) for v, p in zip(values, prior, strict=False)]
                if any(diff):
                    rows.append((keys, diff))
            rows.sort(key=lambda row: -row[1][0] if row[1] else 0)
            out.append(result.model_copy(update={"rows": rows, "total_rows": len(rows)}))
        else:
            out.append(result)  # stacks and samples: the cumulative view is what we have
    return out


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
