"""Dependencies as Annotated aliases: settings, database session, dispatcher, caller's role."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from controller.audit.middleware import note_caller
from controller.auth import service as auth_service
from controller.auth.models import ApiToken, Role
from controller.dispatch import Dispatcher
from controller.errors import Forbidden, Unauthenticated
from controller.hosts.identity import Identities
from controller.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def get_dispatcher(request: Request) -> Dispatcher:
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


def get_identities(request: Request) -> Identities:
    identities: Identities = request.app.state.identities
    return identities


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
IdentitiesDep = Annotated[Identities, Depends(get_identities)]

_bearer = HTTPBearer(auto_error=False, description="an API token: Authorization: Bearer ft_...")


def current_token(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiToken:
    if credentials is None:
        raise Unauthenticated("an API token is required")
    token = auth_service.authenticate(session=session, raw=credentials.credentials)
    if token is None:
        raise Unauthenticated("unknown or revoked API token")
    # Commit even when nothing was written: it gives the connection back to the pool. Sync
    # dependencies and the route run as separate thread-pool steps, and 200 requests holding
    # a connection while they wait for a thread exhaust it (test_sse_load). Not a rollback:
    # that would expire the token, and the role check would take a connection to reload it.
    auth_service.note_use(session=session, token=token)
    session.commit()
    note_caller(request.scope, actor=token.name, role=token.role)
    return token


def require(role: Role) -> Callable[[ApiToken], ApiToken]:
    def check(token: Annotated[ApiToken, Depends(current_token)]) -> ApiToken:
        if not Role(token.role).allows(role):
            raise Forbidden(f"this needs the {role.value} role")
        return token

    return check


Viewer = Annotated[ApiToken, Depends(require(Role.viewer))]
Operator = Annotated[ApiToken, Depends(require(Role.operator))]
Admin = Annotated[ApiToken, Depends(require(Role.admin))]
