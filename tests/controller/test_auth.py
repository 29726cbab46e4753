"""A token's last use is written at most once a minute: not a write per request, which would
contend with the ingest for SQLite's one writer."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from controller.auth import service
from controller.auth.models import ApiToken, Role
from tests.controller.conftest import Tokens
from tests.controller.test_reports import statements, writes

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def _last_used(sessions: sessionmaker[Session], token_id: int) -> datetime | None:
    with sessions() as session:
        token = session.get(ApiToken, token_id)
        assert token is not None
        return token.last_used_at


def test_many_requests_within_a_minute_write_last_used_at_once(
    app: FastAPI, client: TestClient, tokens: Tokens, sessions: sessionmaker[Session]
) -> None:
    raw = tokens.make("viewer")
    with sessions() as session:
        token = service.authenticate(session=session, raw=raw)
        assert token is not None and token.last_used_at is None
        token_id = token.id
    headers = {"Authorization": f"Bearer {raw}"}
    with statements(app.state.engine) as seen:
        for _ in range(20):
            assert client.get("/v1/programs", headers=headers).status_code == 200
    assert len(writes(seen)) == 1 and "api_tokens" in writes(seen)[0], writes(seen)
    first = _last_used(sessions, token_id)
    assert first is not None
    # A minute on, the next request notes the use again, once.
    with sessions() as session:
        earlier = first - timedelta(seconds=61)
        session.execute(
            update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=earlier)
        )
        session.commit()
    with statements(app.state.engine) as seen:
        for _ in range(5):
            assert client.get("/v1/programs", headers=headers).status_code == 200
    assert len(writes(seen)) == 1, writes(seen)
    again = _last_used(sessions, token_id)
    assert again is not None and again >= first


@pytest.mark.parametrize(
    ("last_used", "written"),
    [
        (None, True),
        (NOW - timedelta(seconds=1), False),
        (NOW - timedelta(seconds=59), False),
        (NOW - timedelta(seconds=60), True),
        (NOW - timedelta(days=3), True),
        (NOW + timedelta(seconds=5), False),  # another controller's clock runs ahead
    ],
    ids=["never", "1 s ago", "59 s ago", "60 s ago", "3 days ago", "in the future"],
)
def test_note_use_writes_when_the_last_use_is_a_minute_old(
    sessions: sessionmaker[Session], last_used: datetime | None, written: bool
) -> None:
    with sessions() as session:
        token, _ = service.create(session=session, name="clock", role=Role.viewer)
        token.last_used_at = last_used
        session.commit()
        assert service.note_use(session=session, token=token, now=NOW) is written
        session.commit()
        session.expire_all()
        stored = session.get(ApiToken, token.id)
        assert stored is not None
        assert stored.last_used_at == (NOW if written else last_used)
