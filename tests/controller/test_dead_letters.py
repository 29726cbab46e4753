"""Poison entries on a host's stream (SQLite and PostgreSQL): each becomes a dead letter once,
with its reason; every good entry around it is stored once; the stream drains to no lag.

The entries go through the real Redis stream into a real Ingest. Most are unreadable (the
protocol refuses them); two are well-formed snapshots the database itself refuses (a
trigger, as a database refuses a value it cannot store), which only storing entries one by
one can isolate.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from controller.ingest import dead_letters
from controller.ingest.consumer import Ingest
from controller.ingest.dead_letters import DeadLetter
from controller.jobs.models import Run, SnapshotRow
from controller.settings import Settings
from node_agent.wire import events_stream
from tests.controller.conftest import Tokens
from tests.controller.support import (
    counters,
    envelope,
    get_job,
    register_host,
    snapshot,
    state,
    submit,
)

REFUSED_SEQS = (900, 901)  # the database's trigger refuses snapshots with these seqs


@pytest.fixture(scope="module")
def database_url(db_url: str) -> str:
    return db_url


@pytest.fixture(scope="module")
def refusing_db(engine: Engine, client: TestClient) -> Iterator[None]:
    """A trigger that makes the database refuse some snapshots, on either backend."""
    seqs = ", ".join(str(s) for s in REFUSED_SEQS)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_snapshot() RETURNS trigger LANGUAGE plpgsql AS"
                    " $$ BEGIN RAISE EXCEPTION 'the database refuses this snapshot'; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_snapshot BEFORE INSERT ON snapshots FOR EACH ROW"
                    f" WHEN (NEW.seq IN ({seqs})) EXECUTE FUNCTION refuse_snapshot()"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_snapshot BEFORE INSERT ON snapshots"
                    f" WHEN NEW.seq IN ({seqs})"
                    " BEGIN SELECT RAISE(ABORT, 'the database refuses this snapshot'); END"
                )
            )
    yield
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("DROP TRIGGER refuse_snapshot ON snapshots"))
            conn.execute(text("DROP FUNCTION refuse_snapshot()"))
        else:
            conn.execute(text("DROP TRIGGER refuse_snapshot"))


def _poison(host: str, run_id: str, job_id: str) -> list[tuple[dict[bytes, bytes], str]]:
    """(stream fields, the start of the reason expected) for 20 entries that cannot be stored."""
    good = json.loads(envelope(host, snapshot(run_id, 5, [counters("c", {"x": 1})]), job_id))

    def variant(**change: Any) -> bytes:
        data = json.loads(json.dumps(good))
        for path, value in change.items():
            *parents, leaf = path.split("__")
            node = data
            for part in parents:
                node = node[int(part)] if part.isdigit() else node[part]
            node[leaf] = value  # (no list leaves here)
        return json.dumps(data).encode()

    unreadable = "unreadable:"
    entries: list[tuple[bytes | None, str]] = [
        (b"not json", unreadable),
        (b"{}", unreadable),
        (b"[]", unreadable),
        (b"", unreadable),
        (None, unreadable),  # no data field at all
        (b'{"host": "' + host.encode() + b'", "event": ', unreadable),  # cut short
        (b"\xff\xfe\x00garbage", unreadable),
        (b"[" * 100_000 + b"]" * 100_000, unreadable),  # nested past any parser's depth
        (b"x" * 1_000_000, unreadable),  # 1 MB
        (variant(event__type="no-such-event"), unreadable),
        (variant(event__seq=2**31), unreadable),
        (variant(event__seq=-1), unreadable),
        (variant(event__run_id="x" * 10_000), unreadable),
        (variant(host="h" * 1000), unreadable),
        (variant(event__results=[{"kind": "nonsense"}]), unreadable),
        (variant(event__interval_end="yesterday"), unreadable),
        (json.dumps(good).replace('"x"', '"\\ud800"').encode(), unreadable),  # lone surrogate
        (variant(event__results__0__rows=[[["a"], ["NaN"]]]), unreadable),
    ]
    for seq in REFUSED_SEQS:  # well-formed: only the database refuses them
        data = envelope(host, snapshot(run_id, seq, [counters("c", {"x": seq})]), job_id)
        entries.append((data.encode(), ""))
    assert len(entries) == 20
    return [
        ({b"data": data} if data is not None else {b"other": b"1"}, why) for data, why in entries
    ]


def _drain(ingest: Ingest, host: str) -> None:
    ingest.refresh_hosts(force=True)
    for _ in range(200):
        handled = ingest.step(block_ms=50)
        info: Any = ingest.redis.xpending(events_stream(host), ingest.group)
        groups: Any = ingest.redis.xinfo_groups(events_stream(host))
        lag = sum(int(g.get("lag") or 0) for g in groups)
        if handled == 0 and int(info["pending"]) == 0 and lag == 0:
            return
    raise AssertionError("ingest did not drain the stream")


def test_poison_entries_become_dead_letters_and_the_rest_is_stored_once(
    client: TestClient,
    tokens: Tokens,
    settings: Settings,
    sessions: sessionmaker[Session],
    redis_client: redis.Redis,
    refusing_db: None,
) -> None:
    admin = tokens.headers("admin")
    host = f"dl-{uuid.uuid4().hex[:8]}"
    register_host(client, admin, host)
    job = submit(client, admin, targets={"hosts": [host]}, duration_s=30)
    run_id, job_id = job["runs"][0]["id"], job["id"]
    good: list[bytes] = [envelope(host, state(run_id, "running"), job_id).encode()]
    good += [
        envelope(host, snapshot(run_id, seq, [counters("c", {"x": seq})]), job_id).encode()
        for seq in range(20)
    ]
    final = snapshot(run_id, 20, [counters("c", {"x": 20})], final=True)
    good += [envelope(host, final, job_id).encode()]
    good += [envelope(host, state(run_id, "succeeded"), job_id).encode()]
    poison = _poison(host, run_id, job_id)
    stream = events_stream(host)
    poison_ids: dict[bytes, str] = {}
    for i, data in enumerate(good):  # interleaved: a bad entry after almost every good one
        redis_client.xadd(stream, {"data": data})
        if i < len(poison):
            fields, why = poison[i]
            entry_id: Any = redis_client.xadd(stream, fields)  # type: ignore[arg-type]
            poison_ids[entry_id] = why

    ingest = Ingest(settings, sessions, redis_client)
    ingest.ensure_group()
    _drain(ingest, host)
    _drain(ingest, host)  # a second pass finds nothing more to do

    with sessions() as session:
        seqs = session.scalars(
            select(SnapshotRow.seq).where(SnapshotRow.run_id == run_id).order_by(SnapshotRow.seq)
        ).all()
        run = session.get(Run, run_id)
        assert run is not None and run.state == "succeeded"
        letters = session.scalars(
            select(DeadLetter).where(DeadLetter.host == host).order_by(DeadLetter.id)
        ).all()
    assert seqs == list(range(21))  # every good snapshot, once; neither refused one
    assert get_job(client, admin, job_id)["state"] == "succeeded"
    assert [letter.entry_id.encode() for letter in letters] == list(poison_ids)  # each once
    for letter in letters:
        why = poison_ids[letter.entry_id.encode()]
        assert letter.reason.startswith(why), (letter.reason, why)
        assert len(letter.data) <= dead_letters.DATA_CHARS
        assert "\x00" not in letter.data
    refused = [letter for letter in letters if not letter.reason.startswith("unreadable:")]
    assert len(refused) == len(REFUSED_SEQS)
    assert all("refuses this snapshot" in letter.reason for letter in refused)
    assert max(letter.size for letter in letters) == 1_000_000  # counted whole, kept in part
    assert ingest.stored == len(good)


def _dead_letters(sessions: sessionmaker[Session], n: int, ms: str, data: bytes) -> str:
    """`n` dead letters (entry ids `ms`-0, `ms`-1, ...) of a new host; returns the host."""
    host = f"dl-{uuid.uuid4().hex[:8]}"
    with sessions() as session:
        for i in range(n):
            entry_id = f"{ms}-{i}".encode()
            dead_letters.record(session, host=host, entry_id=entry_id, data=data, reason="r")
        session.commit()
    return host


def test_dead_letters_through_the_api_admin_only(
    client: TestClient, tokens: Tokens, sessions: sessionmaker[Session]
) -> None:
    host = _dead_letters(sessions, 3, "1", b"\x00\x1b[31m")
    admin = tokens.headers("admin")
    answer = client.get("/v1/ingest/dead-letters", params={"host": host, "limit": 2}, headers=admin)
    assert answer.status_code == 200
    body = answer.json()
    assert body["count"] == 3
    assert [r["entry_id"] for r in body["data"]] == ["1-2", "1-1"]  # newest first
    assert body["data"][0]["data"] == "\\u0000\x1b[31m"  # stored without NUL, sent escaped
    viewer = client.get("/v1/ingest/dead-letters", headers=tokens.headers("viewer"))
    assert viewer.status_code == 403
    bad = client.get("/v1/ingest/dead-letters", params={"host": "../x"}, headers=admin)
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "host"]


def test_prune_keeps_the_newest(sessions: sessionmaker[Session]) -> None:
    _dead_letters(sessions, 5, "2", b"")
    with sessions() as session:
        dead_letters.prune(session, keep=2)
        session.commit()
        kept = session.scalars(select(DeadLetter.entry_id).order_by(DeadLetter.id)).all()
    assert kept == ["2-3", "2-4"]
