"""Routes for hosts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from controller.api.deps import Admin, SessionDep, SettingsDep, Viewer
from controller.hosts import service
from controller.hosts.models import HostCreate, HostPublic, HostsPublic, HostUpdate

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
    host_in: HostCreate, session: SessionDep, settings: SettingsDep, _: Admin
) -> HostPublic:
    """Register a host by name, address and labels."""
    host = service.create(session=session, host_in=host_in)
    session.commit()
    return service.to_public(host, timeout_s=settings.heartbeat_timeout_s)


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
def delete_host(name: str, session: SessionDep, _: Admin) -> None:
    """Forget a host (its past runs stay)."""
    host = service.get(session=session, name=name)
    if host is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no host {name!r}")
    session.delete(host)
    session.commit()
