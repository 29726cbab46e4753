"""Routes for hosts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from controller.api.deps import Admin, IdentitiesDep, SessionDep, SettingsDep, Viewer
from controller.hosts import service
from controller.hosts.identity import Credential
from controller.hosts.models import (
    HostCreate,
    HostCreated,
    HostJoin,
    HostPublic,
    HostsPublic,
    HostUpdate,
)

router = APIRouter(prefix="/v1/hosts", tags=["hosts"])


def _selector(raw: list[str]) -> dict[str, str]:
    selector: dict[str, str] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not key:
            # The same shape as FastAPI's own validation errors, so clients find the field.
            detail = [
                {
                    "loc": ["query", "selector"],
                    "msg": f"bad {item!r}, want k=v",
                    "type": "value_error",
                }
            ]
            raise HTTPException(422, detail)
        selector[key] = value
    return selector


@router.get("", operation_id="list_hosts")
def list_hosts(
    session: SessionDep,
    settings: SettingsDep,
    _: Viewer,
    selector: Annotated[
        list[str] | None, Query(description="label selector k=v, repeatable")
    ] = None,
) -> HostsPublic:
    """List hosts with their state, labels and capabilities."""
    hosts = service.list_hosts(session=session, selector=_selector(selector or []))
    data = [service.to_public(h, timeout_s=settings.heartbeat_timeout_s) for h in hosts]
    return HostsPublic(data=data, count=len(data))


@router.post("", operation_id="create_host", status_code=status.HTTP_201_CREATED)
def create_host(
    host_in: HostCreate,
    session: SessionDep,
    settings: SettingsDep,
    identities: IdentitiesDep,
    _: Admin,
) -> HostCreated:
    """Register a host by name, address and labels; its Redis identity is shown once."""
    host = service.create(session=session, host_in=host_in)
    credential = service.issue_identity(host=host, identities=identities)
    session.commit()
    identities.hosts_changed()
    identities.apply(host.name, host.agent_secret_sha256 or "")
    public = service.to_public(host, timeout_s=settings.heartbeat_timeout_s)
    return HostCreated(**public.model_dump(), join=_join(credential))


@router.post("/{name}/credential", operation_id="issue_host_credential")
def issue_host_credential(
    name: str, session: SessionDep, identities: IdentitiesDep, _: Admin
) -> HostJoin:
    """Issue the host a new Redis identity (the old one stops working); shown once."""
    host = service.get(session=session, name=name)
    if host is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no host {name!r}")
    credential = service.issue_identity(host=host, identities=identities)
    session.commit()
    identities.apply(host.name, host.agent_secret_sha256 or "")
    return _join(credential)


def _join(credential: Credential) -> HostJoin:
    return HostJoin(redis_url=credential.redis_url, command=credential.join_command)


@router.get("/{name}", operation_id="get_host")
def get_host(name: str, session: SessionDep, settings: SettingsDep, _: Viewer) -> HostPublic:
    """Show one host."""
    host = service.get(session=session, name=name)
    if host is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no host {name!r}")
    return service.to_public(host, timeout_s=settings.heartbeat_timeout_s)


@router.patch("/{name}", operation_id="update_host")
def update_host(
    name: str, host_in: HostUpdate, session: SessionDep, settings: SettingsDep, _: Admin
) -> HostPublic:
    """Change a host's address or labels."""
    host = service.get(session=session, name=name)
    if host is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no host {name!r}")
    service.update(session=session, host=host, host_in=host_in)
    session.commit()
    return service.to_public(host, timeout_s=settings.heartbeat_timeout_s)


@router.delete("/{name}", operation_id="delete_host", status_code=status.HTTP_204_NO_CONTENT)
def delete_host(name: str, session: SessionDep, identities: IdentitiesDep, _: Admin) -> None:
    """Forget a host (its past runs stay); its Redis identity stops working."""
    host = service.get(session=session, name=name)
    if host is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no host {name!r}")
    session.delete(host)
    session.commit()
    identities.revoke(name, forget=True)
