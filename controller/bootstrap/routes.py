"""Routes for SSH bootstrap: start one or many, watch the steps, uninstall."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, status

from controller.api.deps import Admin, SessionDep, Viewer
from controller.api.params import HostPath
from controller.api.responses import AUTHENTICATED, errors
from controller.bootstrap import service
from controller.bootstrap.models import (
    BatchCreate,
    BatchPublic,
    BootstrapOptions,
    BootstrapRunPublic,
    RunKind,
)
from controller.bootstrap.service import BootstrapQueue
from controller.errors import NotFound

router = APIRouter(prefix="/v1/hosts", tags=["bootstrap"], responses=AUTHENTICATED)


def get_bootstrap_queue(request: Request) -> BootstrapQueue:
    queue: BootstrapQueue = request.app.state.bootstrap_queue
    return queue


QueueDep = Annotated[BootstrapQueue, Depends(get_bootstrap_queue)]
Starter = Callable[[RunKind, BootstrapOptions], BootstrapRunPublic]


def host_starter(name: HostPath, session: SessionDep, queue: QueueDep, token: Admin) -> Starter:
    """Starts a run of the host in the path, on behalf of the admin calling."""

    def start(kind: RunKind, options: BootstrapOptions) -> BootstrapRunPublic:
        run = service.start(
            session=session,
            queue=queue,
            host_name=name,
            kind=kind,
            options=options,
            created_by=token.name,
        )
        return service.to_public(run)

    return start


StarterDep = Annotated[Starter, Depends(host_starter)]
OptionsBody = Annotated[BootstrapOptions | None, Body()]
# A host's bootstrap or uninstall: accepted and queued, or no such host, one running, no broker.
STARTED: dict[str, Any] = {"status_code": 202, "responses": errors(404, 409, 503)}


@router.post(
    "/bootstrap",
    operation_id="bootstrap_hosts",
    responses=errors(409, 503),
    status_code=status.HTTP_202_ACCEPTED,
)
def bootstrap_hosts(
    batch_in: BatchCreate, session: SessionDep, queue: QueueDep, token: Admin
) -> BatchPublic:
    """Bootstrap many hosts, `parallel` at a time, starting none after `max_failures` failed."""
    batch = service.start_batch(
        session=session, queue=queue, batch_in=batch_in, created_by=token.name
    )
    return service.batch_to_public(batch)


@router.post("/{name}/bootstrap", operation_id="bootstrap_host", **STARTED)
def bootstrap_host(start: StarterDep, options: OptionsBody = None) -> BootstrapRunPublic:
    """Install, configure and start the agent on a host over SSH."""
    return start(RunKind.bootstrap, options or BootstrapOptions())


@router.get("/{name}/bootstrap", operation_id="get_host_bootstrap", responses=errors(404))
def get_host_bootstrap(name: HostPath, session: SessionDep, _: Viewer) -> BootstrapRunPublic:
    """The host's latest bootstrap or uninstall run, step by step."""
    run = service.latest_run(session=session, host_name=name)
    if run is None:
        raise NotFound(f"no bootstrap of {name!r} yet")
    return service.to_public(run)


@router.post("/{name}/uninstall", operation_id="uninstall_host", **STARTED)
def uninstall_host(start: StarterDep) -> BootstrapRunPublic:
    """Stop the agent and remove everything bootstrap put on the host."""
    return start(RunKind.uninstall, BootstrapOptions())
