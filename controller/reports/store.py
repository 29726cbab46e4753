"""Run digests in the database: written by the ingest with a run's final snapshot, read by
reports. A report that has to digest a newer snapshot does it in memory and hands what it made
to `later` (the API: a background task that stores it once the answer is sent): reads never
write."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy import ForeignKey, LargeBinary, String, func, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, deferred, mapped_column, sessionmaker

from controller.db import Base
from controller.jobs.models import Job, JobState, SnapshotRow
from controller.jobs.results import newest, on_newest, parse_results
from controller.reports import digest as dg
from controller.reports.fleet import HostInput, ReportInput, constant
from node_agent.protocol import Result, RunState, SnapshotStats

log = logging.getLogger(__name__)

# Digests made while reading, by run id: (digest, table details).
Made = dict[str, tuple[dg.RunDigest, list[dg.TableDetail]]]
# Where a read hands the digests it made: (job id, made).
Later = Callable[[str, Made], None]


class RunDigestRow(Base):
    """One run's results reduced for reports (see controller.reports.digest)."""

    __tablename__ = "run_digests"

    run_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    job_id: Mapped[str] = mapped_column(String(36), index=True)
    seq: Mapped[int]
    body: Mapped[dict[str, Any]]
    arrays: Mapped[bytes] = mapped_column(LargeBinary)
    detail: Mapped[bytes] = deferred(mapped_column(LargeBinary))


def _row(
    run_id: str, job_id: str, run: dg.RunDigest, details: Sequence[dg.TableDetail]
) -> RunDigestRow:
    body, arrays = dg.encode(run)
    return RunDigestRow(
        run_id=run_id,
        job_id=job_id,
        seq=run.seq,
        body=body,
        arrays=arrays,
        detail=dg.encode_detail(details),
    )


def put(
    session: Session,
    *,
    run_id: str,
    job_id: str,
    seq: int,
    results: Sequence[Result],
    stored: bool | None = None,
) -> None:
    """Digest a run's snapshot and store it in the caller's transaction (replacing an older
    one). `stored`: whether the run has a digest already, when the caller knows (a batch
    asks once for all its runs rather than once per run, with a flush before each)."""
    run, details = dg.digest(seq, results)
    row = _row(run_id, job_id, run, details)
    if stored is False:
        session.add(row)
        return
    with session.no_autoflush:
        current = session.get(RunDigestRow, run_id)
    if current is None:
        session.add(row)
        return
    current.job_id, current.seq, current.body = row.job_id, row.seq, row.body
    current.arrays, current.detail = row.arrays, row.detail


def stored_digests(session: Session, run_ids: Collection[str]) -> set[str]:
    """Which of these runs have a digest."""
    if not run_ids:
        return set()
    query = select(RunDigestRow.run_id).where(RunDigestRow.run_id.in_(run_ids))
    return set(session.scalars(query))


def _detail_loader(session: Session, run_id: str, seq: int) -> Callable[[], list[dg.TableDetail]]:
    def load() -> list[dg.TableDetail]:
        # Only the detail of the digest that was read: the row may have been replaced since.
        blob = session.scalar(
            select(RunDigestRow.detail).where(
                RunDigestRow.run_id == run_id, RunDigestRow.seq == seq
            )
        )
        return dg.decode_detail(blob) if blob else []

    return load


def report_input(*, session: Session, job: Job, later: Later | None = None) -> ReportInput:
    """Every run of the job with its digest and its span. Digests missing or older than the
    run's latest snapshot are made now, in memory, and handed to `later` to be stored."""
    latest = {
        run_id: (seq, end - start if end > start else None)
        for run_id, seq, start, end in session.execute(
            select(
                SnapshotRow.run_id,
                func.max(SnapshotRow.seq),
                func.min(SnapshotRow.interval_start),
                func.max(SnapshotRow.interval_end),
            )
            .where(SnapshotRow.job_id == job.id)
            .group_by(SnapshotRow.run_id)
        )
    }
    stored = {
        run_id: (seq, body, bytes(arrays))
        for run_id, seq, body, arrays in digest_rows(session, job_id=job.id)
    }
    fresh: Made = {}
    for run_id, (seq, _) in latest.items():
        have = stored.get(run_id)
        if have is None or have[0] != seq or have[1].get("format") != dg.FORMAT:
            fresh[run_id] = _digest_snapshot(session, run_id, seq)
    if fresh and later is not None:
        later(job.id, fresh)
    stats = _last_stats(session, job.id)
    hosts = []
    for run in job.runs:
        run_digest: dg.RunDigest | None = None
        loader = constant([])
        if run.id in fresh:
            run_digest, details = fresh[run.id]
            loader = constant(details)
        elif run.id in stored and run.id in latest:
            seq, body, arrays = stored[run.id]
            run_digest = dg.decode(body, arrays)
            loader = _detail_loader(session, run.id, seq)
        hosts.append(
            HostInput(
                host=run.host_name,
                run_id=run.id,
                state=RunState(run.state),
                reason=run.reason,
                span=latest[run.id][1] if run.id in latest else None,
                digest=run_digest,
                load_detail=loader,
                stats=stats.get(run.id),
            )
        )
    return ReportInput(job_id=job.id, program=job.program, state=JobState(job.state), hosts=hosts)


def _last_stats(session: Session, job_id: str) -> dict[str, SnapshotStats]:
    """Each run's last snapshot's stats (what the trace cost its host)."""
    last = newest(job_id)
    query = select(SnapshotRow.run_id, SnapshotRow.stats).join(last, on_newest(last))
    found: dict[str, SnapshotStats] = {}
    for run_id, raw in session.execute(query):
        try:
            found[run_id] = SnapshotStats.model_validate(raw or {})
        except ValidationError:  # stored by an older agent: no cost shown, the rest is
            log.warning("report: run %s has stats this version cannot read", run_id)
    return found


def digest_rows(session: Session, *, job_id: str) -> Sequence[Sequence[Any]]:
    """(run_id, seq, body, arrays) of the job's digests. On PostgreSQL the ORM's statement,
    compiled for its dialect, runs on a binary-format cursor: the arrays of 1,000 hosts are
    ~100 MB, which psycopg's default text format sends as hex (0.24 s against 0.07 s)."""
    query = select(
        RunDigestRow.run_id, RunDigestRow.seq, RunDigestRow.body, RunDigestRow.arrays
    ).where(RunDigestRow.job_id == job_id)
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        return session.execute(query).all()
    compiled = query.compile(dialect=connection.dialect)
    driver = connection.connection.driver_connection
    assert driver is not None
    with driver.cursor(binary=True) as cursor:  # psycopg decodes the JSON body itself
        cursor.execute(str(compiled), compiled.params)
        rows: list[tuple[Any, ...]] = cursor.fetchall()
        return rows


def _digest_snapshot(
    session: Session, run_id: str, seq: int
) -> tuple[dg.RunDigest, list[dg.TableDetail]]:
    raw = session.scalar(
        select(SnapshotRow.results).where(SnapshotRow.run_id == run_id, SnapshotRow.seq == seq)
    )
    return dg.digest(seq, parse_results(raw or []))


def save(sessions: sessionmaker[Session], job_id: str, made: Made) -> None:
    """Store digests a report made, in a session of their own (a background task's)."""
    try:
        with sessions() as session:
            keep(session, job_id, made)
    except SQLAlchemyError:  # a cache: the next report makes them again
        log.exception("job %s: could not store %d digests made by a report", job_id, len(made))


def keep(session: Session, job_id: str, fresh: Made) -> None:
    """Keep digests made while reading (a cache). Never over a newer one: the ingest may have
    stored the final snapshot's digest meanwhile; losing a race to another writer is fine."""
    try:
        with session.begin_nested():
            for run_id, (run, details) in fresh.items():
                row = _row(run_id, job_id, run, details)
                replaced = session.execute(
                    update(RunDigestRow)
                    .where(RunDigestRow.run_id == run_id, RunDigestRow.seq <= run.seq)
                    .values(seq=row.seq, body=row.body, arrays=row.arrays, detail=row.detail)
                    .execution_options(synchronize_session=False)
                )
                exists = session.scalar(
                    select(RunDigestRow.seq).where(RunDigestRow.run_id == run_id)
                )
                if getattr(replaced, "rowcount", 0) == 0 and exists is None:
                    session.add(row)
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        log.info("job %s: digests written by someone else meanwhile (%s)", job_id, exc.orig)
