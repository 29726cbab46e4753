"""Routes for API tokens (admin only)."""

from __future__ import annotations

from fastapi import APIRouter, status

from controller.api.deps import Admin, SessionDep
from controller.api.params import RowId
from controller.api.responses import AUTHENTICATED, DELETED
from controller.auth import service
from controller.auth.models import ApiToken, TokenCreate, TokenCreated, TokenPublic, TokensPublic
from controller.errors import NotFound

router = APIRouter(prefix="/v1/tokens", tags=["tokens"], responses=AUTHENTICATED)


def _public(token: ApiToken) -> TokenPublic:
    return TokenPublic.model_validate(token, from_attributes=True)


@router.get("", operation_id="list_tokens")
def list_tokens(session: SessionDep, _: Admin) -> TokensPublic:
    """List tokens (never their secrets)."""
    data = [_public(t) for t in service.list_tokens(session=session)]
    return TokensPublic(data=data, count=len(data))


@router.post("", operation_id="create_token", status_code=status.HTTP_201_CREATED)
def create_token(token_in: TokenCreate, session: SessionDep, _: Admin) -> TokenCreated:
    """Create a token; its secret is shown in this answer only."""
    token, raw = service.create(session=session, name=token_in.name, role=token_in.role)
    session.commit()
    return TokenCreated(**_public(token).model_dump(), token=raw)


@router.delete("/{token_id}", operation_id="revoke_token", **DELETED)
def revoke_token(token_id: RowId, session: SessionDep, _: Admin) -> None:
    """Revoke a token."""
    if service.revoke(session=session, token_id=token_id) is None:
        raise NotFound(f"no token {token_id}")
    session.commit()
