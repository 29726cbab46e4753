"""Ingest: read agents' events from the Redis stream, store them, ack only after commit.

A consumer that dies re-reads its own pending entries on restart (or another consumer claims
them), and storage is idempotent per (run, seq), so nothing is lost and nothing counted twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from controller.audit import service as audit
from controller.hosts import service as hosts_service
from controller.ingest.leases import LeaseRules, Leases
from controller.ingest.link import TRANSIENT, RedisLink, is_nogroup
from controller.jobs import service as jobs_service
from controller.jobs.models import Job, Run, SnapshotRow
from controller.reports import store as digests
from controller.settings import Settings
from node_agent.protocol import (
    Heartbeat,
    Refusal,
    RunState,
    Snapshot,
    StateChange,
    StreamEnvelope,
)
from node_agent.wire import EVENTS_STREAM

log = logging.getLogger(__name__)
DEAD_LETTERS = "fleettrace:events:dead"
SWEEP_EVERY_S = 1.0

Entry = tuple[bytes, dict[bytes, bytes]]


class Ingest:
    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], client: redis.Redis
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.redis = client
        self.group = settings.ingest_group
        self.consumer = settings.ingest_consumer
        self._recovered = False
        self._last_sweep = 0.0
        self.stored = 0
        self.link = RedisLink("ingest")
        self._group_ready = False
        self.leases = Leases(LeaseRules.of(settings))

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(EVENTS_STREAM, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def step(self, block_ms: int = 1000) -> int:
        """Read, store and ack one batch, then sweep if due; returns how many entries were
        handled."""
        handled = self._handle_batch(block_ms)
        self.link.up()
        self._sweep_if_due()
        return handled

    def _handle_batch(self, block_ms: int) -> int:
        entries = self._read(block_ms)
        if entries:
            self._store(entries)
            self.redis.xack(EVENTS_STREAM, self.group, *[entry_id for entry_id, _ in entries])
        return len(entries)

    def _read(self, block_ms: int) -> list[Entry]:
        count = self.settings.ingest_batch
        if not self._recovered:
            # First our own pending entries: delivered before a crash, never acked.
            mine = self.redis.xreadgroup(
                self.group, self.consumer, {EVENTS_STREAM: "0"}, count=count
            )
            pending = _entries(mine)
            if pending:
                return pending
            self._recovered = True
            claimed = self.redis.xautoclaim(
                EVENTS_STREAM,
                self.group,
                self.consumer,
                min_idle_time=self.settings.ingest_claim_idle_ms,
                start_id="0-0",
                count=count,
            )
            found: Any = claimed[1] if claimed else []
            if found:
                return [(e[0], e[1]) for e in found if e[1] is not None]
        return _entries(
            self.redis.xreadgroup(
                self.group, self.consumer, {EVENTS_STREAM: ">"}, count=count, block=block_ms
            )
        )

    def _store(self, entries: Sequence[Entry]) -> None:
        envelopes: list[StreamEnvelope] = []
        for entry_id, fields in entries:
            raw = fields.get(b"data", b"")
            try:
                envelopes.append(StreamEnvelope.model_validate_json(raw))
            except ValidationError as exc:
                log.error(
                    "ingest: unreadable entry %s moved to %s: %s", entry_id, DEAD_LETTERS, exc
                )
                self.redis.xadd(DEAD_LETTERS, {"id": entry_id, "data": raw}, maxlen=10_000)
        with self.sessions() as session:
            self._apply_batch(session, envelopes)
            session.commit()
        self.stored += len(envelopes)

    def _apply_batch(self, session: Session, envelopes: Sequence[StreamEnvelope]) -> None:
        """apply() for each envelope, with one query for the batch's runs, one for its stored
        seqs and one INSERT for its snapshots (not a few round trips per entry); the event log
        keeps the entries' order."""
        _held = _preload(session, envelopes)
        stored = _stored_seqs(session, envelopes)
        new_rows: dict[int, tuple[Run, SnapshotRow]] = {}
        for i, envelope in enumerate(envelopes):
            snap = envelope.event
            if not isinstance(snap, Snapshot):
                continue
            run = self._checked_run(session, envelope, snap.run_id)
            if run is None or (run.id, snap.seq) in stored:
                continue  # a redelivery after a crash (or twice in one batch): stored already
            stored.add((run.id, snap.seq))
            new_rows[i] = (run, self._snapshot_row(session, run, snap))
        session.flush()  # the snapshot ids, for the event log
        for i, envelope in enumerate(envelopes):
            if i in new_rows:
                self._snapshot_event(session, *new_rows[i])
            elif not isinstance(envelope.event, Snapshot):
                self.apply(session, envelope)

    def apply(self, session: Session, envelope: StreamEnvelope) -> None:
        event = envelope.event
        if isinstance(event, Heartbeat):
            host = hosts_service.record_heartbeat(
                session=session, beat=event, auto_register=self.settings.auto_register_hosts
            )
            if host is not None:  # the runs the host holds and no longer lists end here
                self.leases.heard(session, host=host.name, running=event.running)
            return
        if isinstance(event, Refusal):
            log.warning(
                "ingest: host %s refused run %s: %s %s",
                envelope.host,
                event.run_id,
                event.reason.value,
                event.detail,
            )
            audit.record_agent_event(
                session,
                host=envelope.host,
                action=f"agent.refused.{event.reason.value}",
                detail=event.detail,
                run_id=event.run_id,
            )
            return
        run = self._checked_run(session, envelope, event.run_id)
        if run is None:
            return
        if isinstance(event, Snapshot):
            self._snapshot(session, run, event)
        else:
            self._state(session, run, event)

    def _checked_run(self, session: Session, envelope: StreamEnvelope, run_id: str) -> Run | None:
        """The run an event is about, if it exists and belongs to the host that sent it."""
        run = session.get(Run, run_id)
        if run is None:
            log.warning("ingest: event for unknown run %s from %s", run_id, envelope.host)
            return None
        if run.host_name != envelope.host:
            log.warning(
                "ingest: host %s sent an event for %s's run %s",
                envelope.host,
                run.host_name,
                run.id,
            )
            return None
        return run

    def _snapshot(self, session: Session, run: Run, snap: Snapshot) -> None:
        exists = session.scalar(
            select(SnapshotRow.id).where(SnapshotRow.run_id == run.id, SnapshotRow.seq == snap.seq)
        )
        if exists is not None:
            return  # a redelivery after a crash: stored already
        row = self._snapshot_row(session, run, snap)
        session.flush()
        self._snapshot_event(session, run, row)

    def _snapshot_row(self, session: Session, run: Run, snap: Snapshot) -> SnapshotRow:
        data = snap.model_dump(mode="json")
        row = SnapshotRow(
            run_id=run.id,
            job_id=run.job_id,
            host_name=run.host_name,
            seq=snap.seq,
            final=snap.final,
            interval_start=snap.interval_start,
            interval_end=snap.interval_end,
            results=data["results"],
            stats=data["stats"],
        )
        session.add(row)
        run.last_seq = max(run.last_seq, snap.seq)
        if snap.final:  # reports read the digest, not the (possibly huge) snapshot
            try:
                digests.put(
                    session, run_id=run.id, job_id=run.job_id, seq=snap.seq, results=snap.results
                )
            except Exception:  # a report makes it later; the snapshot must not wait for it
                log.exception("ingest: no digest for run %s seq %d", run.id, snap.seq)
        return row

    def _snapshot_event(self, session: Session, run: Run, row: SnapshotRow) -> None:
        # The event log points at the stored snapshot rather than holding a second copy.
        payload = {"run_id": run.id, "host": run.host_name, "seq": row.seq, "snapshot_id": row.id}
        jobs_service.add_event(
            session, job_id=run.job_id, run=run, kind="snapshot", payload=payload
        )

    def _state(self, session: Session, run: Run, change: StateChange) -> None:
        if change.state is RunState.pending:
            # The host has the run ("accepted"): it can no longer expire for want of a host.
            if run.state not in (RunState.pending.value, RunState.expired.value):
                return
            run.expires_at = None
            if run.state == RunState.pending.value:
                return
        error = change.error.model_dump(mode="json") if change.error else None
        changed = jobs_service.set_run_state(
            session=session, run=run, state=change.state, reason=change.reason, error=error
        )
        if changed:
            job = session.get(Job, run.job_id)
            if job is not None:
                jobs_service.refresh_state(session=session, job=job)

    def sweep(self) -> int:
        """End the runs whose lease lapsed or that never started; needs only the database."""
        with self.sessions() as session:
            ended = self.leases.sweep(session, hearing_since=self.link.hearing_since)
            session.commit()
        return ended

    def _sweep_if_due(self) -> None:
        if time.monotonic() - self._last_sweep < SWEEP_EVERY_S:
            return
        self._last_sweep = time.monotonic()
        try:
            self.sweep()
        except Exception:
            log.exception("ingest: sweep failed; next one in %.0fs", SWEEP_EVERY_S)

    def run_forever(self, stop: threading.Event) -> None:
        log.info("ingest %s/%s reading %s", self.group, self.consumer, EVENTS_STREAM)
        while not stop.is_set():
            if self.link.ready():
                self._try_batch(stop)
            self._sweep_if_due()  # sweeps go on while Redis is away
            if not self.link.is_up:
                stop.wait(min(self.link.wait_s(), SWEEP_EVERY_S))

    def _try_batch(self, stop: threading.Event) -> None:
        """One batch, whatever Redis does meanwhile: away (back off), back empty (NOGROUP)."""
        try:
            if not self._group_ready:
                self.ensure_group()
                self._group_ready = True
            self._handle_batch(block_ms=1000)
            self.link.up()
        except TRANSIENT as exc:
            self.link.down(exc)
            # A read whose reply was lost still delivered its entries: re-read ours first.
            self._recovered = False
        except redis.ResponseError as exc:
            if not is_nogroup(exc):
                self._batch_failed(stop)
                return
            log.warning("ingest: consumer group %s is gone; re-creating it", self.group)
            self._group_ready = self._recovered = False
        except Exception:
            self._batch_failed(stop)

    def _batch_failed(self, stop: threading.Event) -> None:
        log.exception("ingest: batch failed; it stays pending and is retried")
        self._recovered = False
        stop.wait(1.0)


def _preload(session: Session, envelopes: Sequence[StreamEnvelope]) -> list[object]:
    """Load a batch's runs, and the jobs (with all their runs) whose state may change, in two
    queries; the caller holds the result so the (weak) identity map keeps them for the batch."""
    run_ids = {e.event.run_id for e in envelopes if isinstance(e.event, Snapshot | StateChange)}
    if not run_ids:
        return []
    runs = list(session.scalars(select(Run).where(Run.id.in_(run_ids))))
    changing = {e.event.run_id for e in envelopes if isinstance(e.event, StateChange)}
    job_ids = {run.job_id for run in runs if run.id in changing}
    if not job_ids:
        return list(runs)
    # refresh_state() walks a job's runs: loaded once here, not once per state change.
    jobs = session.scalars(
        select(Job).where(Job.id.in_(job_ids)).options(selectinload(Job.runs))
    ).all()
    return [*runs, *jobs]


def _stored_seqs(session: Session, envelopes: Sequence[StreamEnvelope]) -> set[tuple[str, int]]:
    """Which of a batch's (run, seq) snapshots are in the database already."""
    wanted = {(e.event.run_id, e.event.seq) for e in envelopes if isinstance(e.event, Snapshot)}
    if not wanted:
        return set()
    rows = session.execute(
        select(SnapshotRow.run_id, SnapshotRow.seq).where(
            SnapshotRow.run_id.in_({run_id for run_id, _ in wanted}),
            SnapshotRow.seq.in_({seq for _, seq in wanted}),
        )
    )
    return {(run_id, seq) for run_id, seq in rows if (run_id, seq) in wanted}


def _entries(response: Any) -> list[Entry]:
    """XREADGROUP's entries for our one stream, under RESP2 (list) or RESP3 (dict) replies."""
    if not response:
        return []
    if isinstance(response, dict):
        streams = list(response.values())
        return list(streams[0][0]) if streams and streams[0] else []
    return list(response[0][1])
