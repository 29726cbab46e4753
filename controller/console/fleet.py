"""The fleet: every host, whether it answers, and what it can trace."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from controller.api.deps import SessionDep, SettingsDep
from controller.console.web import VisitorDep, page
from controller.hosts import service as hosts

router = APIRouter(include_in_schema=False)


@router.get("/fleet")
def fleet(
    request: Request,
    who: VisitorDep,
    session: SessionDep,
    settings: SettingsDep,
    selector: str = Query(default="", max_length=512),
) -> Response:
    found = hosts.list_hosts(session=session)
    rows = [hosts.to_public(h, timeout_s=settings.heartbeat_timeout_s) for h in found]
    return page(request, "fleet.html", who, hosts=rows, selector=selector)
