"""Routes for hosts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import StringConstraints

from controller.api.deps import (
    Admin,
    DispatcherDep,
    IdentitiesDep,
    SessionDep,
    SettingsDep,
    Viewer,
)
from controller.api.resources import HostDep
from controller.api.responses import AUTHENTICATED, DELETED, errors
from controller.hosts import service
from controller.hosts.identity import Credential
from controller.hosts.models import (
    MAX_LABELS,
    HostCreate,
    HostCreated,
    HostJoin,
    HostPublic,
    HostsPublic,
    HostUpdate,
)

router = APIRouter(prefix="/v1/hosts", tags=["hosts"], responses=AUTHENTICATED)


@router.get("", operation_id="list_hosts")
def list_hosts(
    session: SessionDep,
    settings: SettingsDep,
    _: Viewer,
    selector: Annotated[
        list[Annotated[str, StringConstraints(max_length=192)]] | None,
        Query(description="label selector k=v, repeatable", max_length=MAX_LABELS),
    ] = None,
) -> HostsPublic:
    """List hosts with their state, labels and capabilities."""
    hosts = service.list_hosts(session=session, selector=service.parse_selector(selector or []))
    data = [service.to_public(h, timeout_s=settings.heartbeat_timeout_s) for h in hosts]
    return HostsPublic(data=data, count=len(data))


@router.post(
    "", operation_id="create_host", responses=errors(409), status_code=status.HTTP_201_CREATED
)
def create_host(
    host_in: HostCreate,
    session: SessionDep,
    settings: SettingsDep,
    identities: IdentitiesDep,
    _: Admin,
) -> HostCreated:
    """Register a host by name, address and labels; its Redis identity is shown once."""
    host, credential = service.register(session=session, identities=identities, host_in=host_in)
    public = service.to_public(host, timeout_s=settings.heartbeat_timeout_s)
    return HostCreated(**public.model_dump(), join=_join(credential))


@router.post("/{name}/credential", operation_id="issue_host_credential", responses=errors(404))
def issue_host_credential(
    session: SessionDep, identities: IdentitiesDep, _: Admin, host: HostDep
) -> HostJoin:
    """Issue the host a new Redis identity (the old one stops working); shown once."""
    credential = service.issue_identity(host=host, identities=identities)
    session.commit()
    identities.apply(host.name, host.agent_secret_sha256 or "")
    return _join(credential)


def _join(credential: Credential) -> HostJoin:
    return HostJoin(redis_url=credential.redis_url, command=credential.join_command)


@router.get("/{name}", operation_id="get_host", responses=errors(404))
def get_host(settings: SettingsDep, _: Viewer, host: HostDep) -> HostPublic:
    """Show one host."""
    return service.to_public(host, timeout_s=settings.heartbeat_timeout_s)


@router.patch("/{name}", operation_id="update_host", responses=errors(404))
def update_host(
    host_in: HostUpdate, session: SessionDep, settings: SettingsDep, _: Admin, host: HostDep
) -> HostPublic:
    """Change a host's address or labels."""
    service.update(session=session, host=host, host_in=host_in)
    session.commit()
    return service.to_public(host, timeout_s=settings.heartbeat_timeout_s)


@router.delete("/{name}", operation_id="delete_host", **DELETED)
def delete_host(
    session: SessionDep,
    dispatcher: DispatcherDep,
    identities: IdentitiesDep,
    _: Admin,
    host: HostDep,
) -> None:
    """Forget a host and drop its task queue (its past runs stay); its Redis identity stops
    working."""
    name = host.name
    session.delete(host)
    session.commit()
    dispatcher.forget_host(host=name)
    identities.revoke(name, forget=True)
