"""Ingest: read agents' events from their hosts' Redis streams, store them, ack after commit.

Each host appends to its own stream, which its Redis identity alone may write: the stream an
event arrives on names its host, whatever the event claims. The streams read are those of
the hosts the controller knows (refreshed periodically, and at once when a host is added).
A consumer that dies re-reads its own pending entries on restart (or another consumer claims
them), and storage is idempotent per (run, seq), so nothing is lost and nothing counted twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import redis
from pydantic import ValidationError
from sqlalchemy import literal, select
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from controller.audit import service as audit
from controller.db import utcnow
from controller.hosts import identity
from controller.hosts import service as hosts_service
from controller.hosts.models import Host
from controller.ingest import consumers, dead_letters
from controller.ingest.leases import LeaseRules, Leases
from controller.ingest.link import TRANSIENT, RedisLink, is_nogroup
from controller.jobs import locks
from controller.jobs import service as jobs_service
from controller.jobs.models import Run, SnapshotRow
from controller.metrics import tally
from controller.reports import store as digests
from controller.settings import Settings
from node_agent.bounds import first_error
from node_agent.protocol import (
    Heartbeat,
    Refusal,
    RunState,
    Snapshot,
    StateChange,
    StreamEnvelope,
)
from node_agent.wire import EVENTS_STREAM_PREFIX, events_stream, valid_host

log = logging.getLogger(__name__)
# The database is away (the batch is retried later), not an entry at fault.
DB_AWAY = (DisconnectionError, InterfaceError, SQLAlchemyTimeoutError)
SWEEP_EVERY_S = 1.0
HOSTS_REFRESH_S = 10.0
# Acked entries leave the hosts' streams after a while (kept a bit for inspection).
TRIM_EVERY_S = 60.0
KEEP_ACKED_S = 600.0

# (host whose stream it came on, entry id, fields)
Entry = tuple[str, bytes, dict[bytes, bytes]]


class Ingest:
    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], client: redis.Redis
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.redis = client
        self.group = settings.ingest_group
        self.consumer = settings.ingest_consumer or consumers.default_name()
        self.hosts: list[str] = []
        self._hosts_version: bytes | None = None
        self._hosts_at = float("-inf")
        self._recovered = False
        self._claimed_at = time.monotonic()
        self._claim_more = False  # the last claim left more idle entries behind
        # The batch was read before (by a dead consumer, or by us before a crash): old news.
        self._replaying = False
        self._last_sweep = 0.0
        self._trimmed_at = time.monotonic()
        self.stored = 0
        self.link = RedisLink("ingest")
        self._group_ready = False
        self.leases = Leases(LeaseRules.of(settings), in_flight=self._others_pending)
        self._refused_stats: dict[str, str] = {}  # host -> why its last beat's stats were dropped
        tally.attach(sessions, settings.redis_url)  # latencies noted below reach /metrics

    def _others_pending(self, host: str) -> bool:
        return consumers.others_pending(self.redis, host, group=self.group, me=self.consumer)

    def ensure_group(self) -> None:
        """Read the hosts the controller knows, with our group on each one's stream."""
        self.refresh_hosts(force=True)

    def refresh_hosts(self, *, force: bool = False) -> None:
        """The streams to read: every known host's; new ones get the group (from their start).
        Also puts back agents' Redis identities a Redis restart lost."""
        version: Any = self.redis.get(identity.HOSTS_VERSION_KEY)
        due = time.monotonic() - self._hosts_at >= HOSTS_REFRESH_S
        if not force and not due and version == self._hosts_version:
            return
        with self.sessions() as session:
            known = session.execute(select(Host.name, Host.agent_secret_sha256)).all()
        names = sorted(name for name, _ in known if valid_host(name))
        new = names if force else sorted(set(names) - set(self.hosts))
        self._create_groups(new)
        if due or force:
            identity.reconcile(self.redis, {name: digest for name, digest in known})
        added = len(set(names) - set(self.hosts))
        removed = len(set(self.hosts) - set(names))
        if added or removed:
            log.info("ingest: reading %d hosts' streams (+%d, -%d)", len(names), added, removed)
        self.hosts = names
        self._hosts_version = version
        self._hosts_at = time.monotonic()

    def _create_groups(self, hosts: Sequence[str]) -> None:
        if not hosts:
            return
        pipe = self.redis.pipeline(transaction=False)
        for host in hosts:
            pipe.xgroup_create(events_stream(host), self.group, id="0", mkstream=True)
        for result in pipe.execute(raise_on_error=False):
            if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                raise result

    def step(self, block_ms: int = 1000) -> int:
        """Read, store and ack one batch, then sweep if due; returns how many entries were
        handled."""
        handled = self._handle_batch(block_ms)
        self.link.up()
        self._sweep_if_due()
        return handled

    def _handle_batch(self, block_ms: int) -> int:
        try:
            entries = self._read(block_ms)
        except redis.ResponseError as exc:
            if not is_nogroup(exc):
                raise
            # A stream (or Redis' whole memory) went away under us: make the groups again.
            log.warning("ingest: %s; re-creating the consumer groups", exc)
            self.refresh_hosts(force=True)
            return 0
        if entries:
            self._store(entries)
            self._ack(entries)
        if time.monotonic() - self._trimmed_at >= TRIM_EVERY_S:
            self.trim()
            consumers.forget_dead(self.redis, self.hosts, group=self.group, me=self.consumer)
        return len(entries)

    def trim(self, keep_s: float = KEEP_ACKED_S) -> int:
        """Drop entries every consumer has acked, older than `keep_s`: never one that is
        pending or not yet delivered. Returns how many went."""
        self._trimmed_at = time.monotonic()
        hosts = list(self.hosts)
        pipe = self.redis.pipeline(transaction=False)
        for host in hosts:
            pipe.xpending(events_stream(host), self.group)
            pipe.xinfo_groups(events_stream(host))
        replies = pipe.execute(raise_on_error=False)
        cutoff = (int((time.time() - keep_s) * 1000), 0)
        pipe = self.redis.pipeline(transaction=False)
        for i, host in enumerate(hosts):
            pending, groups = replies[2 * i], replies[2 * i + 1]
            if isinstance(pending, Exception) or isinstance(groups, Exception):
                continue
            minid = min(cutoff, _first_unacked(pending, groups, self.group))
            pipe.xtrim(events_stream(host), minid=f"{minid[0]}-{minid[1]}", approximate=False)
        trimmed = sum(n for n in pipe.execute(raise_on_error=False) if isinstance(n, int))
        if trimmed:
            log.info("ingest: trimmed %d acked entries from %d streams", trimmed, len(hosts))
        with self.sessions() as session:  # a host sending garbage cannot fill the database
            pruned = dead_letters.prune(session)
            session.commit()
        if pruned:
            log.info("ingest: pruned %d old dead letters", pruned)
        return trimmed

    def _ack(self, entries: Sequence[Entry]) -> None:
        by_host: dict[str, list[bytes]] = defaultdict(list)
        for host, entry_id, _ in entries:
            by_host[host].append(entry_id)
        pipe = self.redis.pipeline(transaction=False)
        for host, ids in by_host.items():
            pipe.xack(events_stream(host), self.group, *ids)
        pipe.execute()

    def _per_stream(self) -> int:
        """XREADGROUP's COUNT is per stream: a batch spread over the hosts' streams."""
        return max(1, self.settings.ingest_batch // max(1, len(self.hosts)))

    def _read(self, block_ms: int) -> list[Entry]:
        self.refresh_hosts()
        if not self.hosts:
            time.sleep(block_ms / 1000)
            return []
        count = self._per_stream()
        self._replaying = True
        if not self._recovered:
            # First our own pending entries: delivered before a crash, never acked.
            pending = self._xreadgroup("0", count=self.settings.ingest_batch)
            if pending:
                return pending
            self._recovered = True
            claimed = self._claim()
            if claimed:
                return claimed
        elif (
            self._claim_more
            or time.monotonic() - self._claimed_at >= self.settings.ingest_claim_idle_ms / 1000
        ):
            claimed = self._claim()  # another consumer died holding entries
            if claimed:
                return claimed
        self._replaying = False
        entries = self._xreadgroup(">", count=count, block_ms=block_ms)
        per_host = Counter(host for host, _, _ in entries)
        full = sorted(host for host, n in per_host.items() if n >= count)
        if full and len(entries) < self.settings.ingest_batch:
            # Busy hosts get the rest of the batch at once, not one entry per round trip.
            more = max(1, (self.settings.ingest_batch - len(entries)) // len(full))
            entries += self._xreadgroup(">", count=more, hosts=full)
        return entries

    def _xreadgroup(
        self, start: str, *, count: int, block_ms: int | None = None, hosts: Sequence[str] = ()
    ) -> list[Entry]:
        streams: Any = {events_stream(host): start for host in (hosts or self.hosts)}
        reply = self.redis.xreadgroup(
            self.group,
            self.consumer,
            streams,
            count=count,
            block=block_ms,  # type: ignore[arg-type]
        )
        return _entries(reply)

    def _claim(self) -> list[Entry]:
        """Entries another consumer took and never acked, idle past the claim time."""
        self._claimed_at = time.monotonic()
        pipe = self.redis.pipeline(transaction=False)
        for host in self.hosts:
            pipe.xautoclaim(
                events_stream(host),
                self.group,
                self.consumer,
                min_idle_time=self.settings.ingest_claim_idle_ms,
                start_id="0-0",
                count=self._per_stream(),
            )
        found: list[Entry] = []
        self._claim_more = False
        for host, reply in zip(self.hosts, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(reply, Exception):
                log.warning("ingest: cannot claim from %s's stream: %s", host, reply)
                continue
            claimed: Any = reply[1] if reply else []
            # A full claim: a dead peer's backlog is taken batch after batch, not one per period.
            self._claim_more |= len(claimed) >= self._per_stream()
            found += [(host, e[0], e[1]) for e in claimed if e[1] is not None]
        if found:
            log.info("ingest: claimed %d entries another consumer left pending", len(found))
        return found

    def _store(self, entries: Sequence[Entry]) -> None:
        """Store a batch in one transaction. If that fails for another reason than the
        database being away, each entry is stored alone, and one that still fails becomes a
        dead letter: one poison entry never holds up the entries around it."""
        try:
            with self.sessions() as session:
                self.stored += self._store_in(session, entries)
                session.commit()
        except Exception as exc:
            if self._database_away(exc) or locks.is_conflict(exc):
                raise
            log.warning(
                "ingest: a batch of %d entries failed (%s); storing them one by one",
                len(entries),
                _why(exc),
            )
            for entry in entries:
                self._store_alone(entry)

    def _store_alone(self, entry: Entry) -> None:
        host, entry_id, fields = entry
        try:
            with self.sessions() as session:
                self.stored += self._store_in(session, [entry])
                session.commit()
        except Exception as exc:
            if self._database_away(exc) or locks.is_conflict(exc):
                raise
            with self.sessions() as session:
                raw = fields.get(b"data", b"")
                dead_letters.record(
                    session, host=host, entry_id=entry_id, data=raw, reason=_why(exc)
                )
                session.commit()

    def _database_away(self, exc: Exception) -> bool:
        """Whether a failure is the database's (retry the batch later) rather than an
        entry's: a connection error, or any operational error while the database does not
        answer a trivial query."""
        if isinstance(exc, DB_AWAY):
            return True
        if not isinstance(exc, OperationalError):
            return False
        try:
            with self.sessions() as session:
                session.execute(select(literal(1)))
        except Exception:
            return True
        return False

    def _store_in(self, session: Session, entries: Sequence[Entry]) -> int:
        """Add a batch's entries to the session; returns how many events are stored."""
        envelopes: list[StreamEnvelope] = []
        for host, entry_id, fields in entries:
            raw = fields.get(b"data", b"")
            try:
                envelope = StreamEnvelope.model_validate_json(raw)
            except ValidationError as exc:
                reason = f"unreadable: {first_error(exc)}"
                dead_letters.record(session, host=host, entry_id=entry_id, data=raw, reason=reason)
                continue
            claimed = _claimed_host(envelope)
            if claimed != host:
                self._impersonation(session, host=host, claimed=claimed, entry_id=entry_id)
                continue
            envelopes.append(envelope)
        self.apply(session, envelopes)
        return len(envelopes)

    def _impersonation(self, session: Session, *, host: str, claimed: str, entry_id: bytes) -> None:
        """An entry on `host`'s stream speaking for `claimed`: ignored, logged and audited."""
        entry = entry_id.decode(errors="replace")
        log.warning(
            "ingest: entry %s on %s's stream claims to come from %s: ignored", entry, host, claimed
        )
        audit.record_agent_event(
            session,
            host=host,
            action="agent.impersonation",
            detail=f"entry {entry} on {host}'s stream claims to come from {claimed}"[:1024],
        )

    def apply(self, session: Session, envelopes: Sequence[StreamEnvelope]) -> None:
        """Store a batch of events: one query for the batch's runs, one for its stored seqs
        and one INSERT for its snapshots (not a few round trips per entry); the event log
        keeps the entries' order. The only write path: tests store events through it too."""
        with jobs_service.buffered_events(session):
            self._apply_all(session, envelopes)

    def _apply_all(self, session: Session, envelopes: Sequence[StreamEnvelope]) -> None:
        _held = _preload(session, envelopes)
        stored = _stored_seqs(session, envelopes)
        new_rows: dict[int, tuple[Run, SnapshotRow]] = {}
        finals: dict[str, tuple[int, Run, Snapshot]] = {}
        for i, envelope in enumerate(envelopes):
            snap = envelope.event
            if not isinstance(snap, Snapshot):
                continue
            run = self._checked_run(session, envelope, snap.run_id)
            if run is None or (run.id, snap.seq) in stored:
                continue  # a redelivery after a crash (or twice in one batch): stored already
            stored.add((run.id, snap.seq))
            if run.last_seq < 0:  # the run's first snapshot stored: how long since submit
                since_submit = (utcnow() - run.created_at).total_seconds()
                tally.observe(session, "first_snapshot", since_submit)
            new_rows[i] = (run, self._snapshot_row(session, run, snap))
            if snap.final and snap.seq > finals.get(run.id, (-1, run, snap))[0]:
                finals[run.id] = (snap.seq, run, snap)
        digested = digests.stored_digests(session, finals)
        for run_id, (_, run, snap) in finals.items():  # one digest per run: its last final
            self._digest(session, run, snap, stored=run_id in digested)
        session.flush()  # the snapshot ids, for the event log
        changed: set[str] = set()
        beats: dict[str, Heartbeat] = {}
        for i, envelope in enumerate(envelopes):
            event = envelope.event
            if i in new_rows:
                self._snapshot_event(session, *new_rows[i])
            elif isinstance(event, Heartbeat):
                beats[envelope.host] = event  # a host's latest beat says it all
                self._stats_refused(envelope.host, event.agent_refused)
            elif isinstance(event, Refusal):
                self._refusal(session, envelope.host, event)
            elif isinstance(event, StateChange):
                run = self._checked_run(session, envelope, event.run_id)
                if run is not None and self._state(session, run, event):
                    changed.add(run.job_id)
        if beats:  # after the batch's state changes: its runs' states are the latest
            known = hosts_service.record_heartbeats(session=session, beats=list(beats.values()))
            # Not by replayed beats: they may predate runs the agent started since.
            if not self._replaying:
                self.leases.heard_many(session, {h.name: beats[h.name].running for h in known})
        # Once per job and batch: a job's state walks all its runs (1,000 hosts, 2,000 state
        # changes in a batch: 2 million steps if done per change).
        locks.refresh_jobs(session, changed)

    def _stats_refused(self, host: str, why: str | None) -> None:
        """Logged once per host until the reason changes: a beat every few seconds each."""
        if why is not None and self._refused_stats.get(host) != why:
            log.warning(
                "ingest: host %s sent agent stats that do not validate (%s):"
                " heartbeat kept without them",
                host,
                why,
            )
        if why is None:
            self._refused_stats.pop(host, None)
        else:
            self._refused_stats[host] = why

    def _refusal(self, session: Session, host: str, event: Refusal) -> None:
        log.warning(
            "ingest: host %s refused run %s: %s %s",
            host,
            event.run_id,
            event.reason.value,
            event.detail,
        )
        audit.record_agent_event(
            session,
            host=host,
            action=f"agent.refused.{event.reason.value}",
            detail=event.detail,
            run_id=event.run_id,
        )

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
        return row

    def _digest(self, session: Session, run: Run, snap: Snapshot, *, stored: bool) -> None:
        """Reports read a final snapshot's digest, not the (possibly huge) snapshot."""
        try:
            digests.put(
                session,
                run_id=run.id,
                job_id=run.job_id,
                seq=snap.seq,
                results=snap.results,
                stored=stored,
            )
        except Exception:  # a report makes it later; the snapshot must not wait for it
            log.exception("ingest: no digest for run %s seq %d", run.id, snap.seq)

    def _snapshot_event(self, session: Session, run: Run, row: SnapshotRow) -> None:
        # The event log points at the stored snapshot rather than holding a second copy.
        payload = {"run_id": run.id, "host": run.host_name, "seq": row.seq, "snapshot_id": row.id}
        jobs_service.add_event(
            session, job_id=run.job_id, run=run, kind="snapshot", payload=payload
        )

    def _state(self, session: Session, run: Run, change: StateChange) -> bool:
        """Apply a state change; True when the run's state changed (its job's may have)."""
        # The first word from the host about this run (whatever it says): it has the task.
        heard_first = run.expires_at is not None and run.state == RunState.pending.value
        if heard_first and run.dispatched_at is not None:
            waited = (utcnow() - run.dispatched_at).total_seconds()
            tally.observe(session, "dispatch_accept", waited)
        if change.state is RunState.pending:
            # The host has the run ("accepted"): it can no longer expire for want of a host.
            if run.state not in (RunState.pending.value, RunState.expired.value):
                return False
            run.expires_at = None
            if run.state == RunState.pending.value:
                return False
        error = change.error.model_dump(mode="json") if change.error else None
        return jobs_service.set_run_state(
            session=session, run=run, state=change.state, reason=change.reason, error=error
        )

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
        log.info(
            "ingest %s/%s reading the hosts' streams %s*",
            self.group,
            self.consumer,
            EVENTS_STREAM_PREFIX,
        )
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
            # A restarted Redis may have lost the groups and the hosts' ACL users (ACL changes
            # are not in the AOF): both are put back before the next read.
            self._group_ready = False
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
    """Load a batch's runs in one query; the caller holds the result so the (weak) identity
    map keeps them for the batch."""
    run_ids = {e.event.run_id for e in envelopes if isinstance(e.event, Snapshot | StateChange)}
    # Locked (they are written anyway): a sweep or another consumer changing one meanwhile
    # waits, and this batch decides on their committed state.
    return list(locks.lock_runs(session, run_ids))


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


def _why(exc: Exception) -> str:
    """An exception in one line, without the SQL and parameters SQLAlchemy adds (the
    parameters are the entry itself)."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    return f"{type(cause).__name__}: {cause}".splitlines()[0][: dead_letters.REASON_CHARS]


def _first_unacked(pending: Any, groups: Any, group: str) -> tuple[int, int]:
    """The id of a stream's oldest entry our group has not acked (pending, or past its last
    delivered id); 0-0 when the group is missing: then nothing goes."""
    ours = [g for g in groups if g["name"] in (group, group.encode())]
    if not ours:
        return (0, 0)
    delivered = _id(ours[0]["last-delivered-id"])
    after = (delivered[0], delivered[1] + 1)
    if pending and int(pending.get("pending") or 0) > 0 and pending.get("min"):
        return min(after, _id(pending["min"]))
    return after


def _id(value: bytes | str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _claimed_host(envelope: StreamEnvelope) -> str:
    """Whom an entry says it is from: its envelope's host, and a heartbeat's own, if they differ."""
    event = envelope.event
    if isinstance(event, Heartbeat) and event.host != envelope.host:
        return event.host
    return envelope.host


def _entries(response: Any) -> list[Entry]:
    """XREADGROUP's entries for all our streams, under RESP2 (list) or RESP3 (dict) replies."""
    if not response:
        return []
    if isinstance(response, dict):
        streams = [(name, value[0] if value else []) for name, value in response.items()]
    else:
        streams = [(name, value) for name, value in response]
    found: list[Entry] = []
    for name, entries in streams:
        stream = name.decode() if isinstance(name, bytes) else str(name)
        host = stream.removeprefix(EVENTS_STREAM_PREFIX)
        found += [(host, entry_id, fields) for entry_id, fields in entries if fields is not None]
    return found
