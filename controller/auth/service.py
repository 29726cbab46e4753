"""Tokens: create, check, revoke. Only a SHA-256 of each token is stored."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from controller.auth.models import ApiToken, Role
from controller.db import utcnow

TOKEN_PREFIX = "ft_"
# last_used_at is this precise: a write per request would contend with the ingest for
# SQLite's one writer.
USE_NOTED_EVERY = timedelta(minutes=1)


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def create(*, session: Session, name: str, role: Role) -> tuple[ApiToken, str]:
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(name=name, role=role.value, token_hash=hash_token(raw))
    session.add(token)
    session.flush()
    return token, raw


def authenticate(*, session: Session, raw: str) -> ApiToken | None:
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(raw)))
    if token is None or token.revoked_at is not None:
        return None
    return token


def note_use(*, session: Session, token: ApiToken, now: datetime | None = None) -> bool:
    """Set the token's last_used_at unless it was set less than a minute ago; True when it was
    written (the caller commits). Conditional, so that concurrent requests write it once."""
    now = now or utcnow()
    cutoff = now - USE_NOTED_EVERY
    if token.last_used_at is not None and token.last_used_at > cutoff:
        return False
    written = session.execute(
        update(ApiToken)
        .where(ApiToken.id == token.id)
        .where((ApiToken.last_used_at.is_(None)) | (ApiToken.last_used_at <= cutoff))
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    set_committed_value(token, "last_used_at", now)
    return bool(getattr(written, "rowcount", 0))


def list_tokens(*, session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke(*, session: Session, token_id: int) -> ApiToken | None:
    token = session.get(ApiToken, token_id)
    if token is not None and token.revoked_at is None:
        token.revoked_at = utcnow()
    return token
