"""Tokens: create, check, revoke. Only a SHA-256 of each token is stored."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.auth.models import ApiToken, Role
from controller.db import utcnow

TOKEN_PREFIX = "ft_"


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


def list_tokens(*, session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke(*, session: Session, token_id: int) -> ApiToken | None:
    token = session.get(ApiToken, token_id)
    if token is not None and token.revoked_at is None:
        token.revoked_at = utcnow()
    return token
