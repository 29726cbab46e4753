"""Console sessions: an API token exchanged at sign-in for a server-side session.

The browser holds only a random session id in an HttpOnly cookie; the database holds its
SHA-256, the token it stands for, the form (CSRF) secret and when it was last used. A session
ends at sign-out, after `console_idle_minutes` without a request, or when its token is revoked.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ForeignKey, String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from controller.auth import service as auth_service
from controller.auth.models import ApiToken, Role
from controller.db import Base, utcnow

COOKIE = "ft_session"
# last_seen_at is written at most this often (SQLite has one writer; see auth.service).
SEEN_EVERY = timedelta(minutes=1)


class ConsoleSession(Base):
    __tablename__ = "console_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"))
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)


@dataclass(frozen=True)
class Visitor:
    """Who is signed in: the token's name and role, and the session's form secret."""

    token_id: int
    name: str
    role: Role
    csrf: str

    def may(self, role: Role) -> bool:
        return self.role.allows(role)


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def sign_in(*, session: Session, raw_token: str, idle: timedelta) -> tuple[str, Visitor] | None:
    """A new session for a valid token: (cookie value, visitor); None for a bad token. Sessions
    left to expire (a browser closed without signing out) are deleted here."""
    token = auth_service.authenticate(session=session, raw=raw_token.strip())
    if token is None:
        return None
    session.execute(delete(ConsoleSession).where(ConsoleSession.last_seen_at < utcnow() - idle))
    raw = secrets.token_urlsafe(32)
    row = ConsoleSession(id_hash=_hash(raw), token_id=token.id, csrf=secrets.token_urlsafe(32))
    session.add(row)
    auth_service.note_use(session=session, token=token)
    session.commit()
    return raw, Visitor(token.id, token.name, Role(token.role), row.csrf)


def visitor(*, session: Session, raw: str, idle: timedelta) -> Visitor | None:
    """The session's visitor, or None when it is unknown, idle too long or its token revoked."""
    if not raw or len(raw) > 128:
        return None
    found = session.execute(
        select(ConsoleSession, ApiToken)
        .join(ApiToken, ApiToken.id == ConsoleSession.token_id)
        .where(ConsoleSession.id_hash == _hash(raw))
    ).first()
    if found is None:
        return None
    row, token = found
    now = utcnow()
    if token.revoked_at is not None or row.last_seen_at < now - idle:
        session.delete(row)
        session.commit()
        return None
    if row.last_seen_at < now - SEEN_EVERY:
        row.last_seen_at = now
        auth_service.note_use(session=session, token=token, now=now)
    # Commit even when nothing changed: it gives the connection back (see api.deps).
    session.commit()
    return Visitor(token.id, token.name, Role(token.role), row.csrf)


def sign_out(*, session: Session, raw: str) -> None:
    session.execute(delete(ConsoleSession).where(ConsoleSession.id_hash == _hash(raw)))
    session.commit()
