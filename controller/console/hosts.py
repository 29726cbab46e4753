"""Hosts in: add a host, bootstrap one or many over SSH and watch each step, uninstall."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from controller.api.deps import IdentitiesDep, SessionDep, SettingsDep
from controller.api.params import IdPath
from controller.bootstrap import service as bootstrap
from controller.bootstrap.models import (
    BatchCreate,
    BootstrapOptions,
    BootstrapRun,
    RunKind,
    RunState,
)
from controller.bootstrap.routes import QueueDep
from controller.console import format as fmt
from controller.console.sessions import Visitor
from controller.console.web import AdminDep, FormDep, PageError, VisitorDep, page, redirect
from controller.errors import ControllerError, InvalidRequest
from controller.hosts import service as hosts
from controller.hosts.models import HostCreate
from controller.settings import Settings

router = APIRouter(include_in_schema=False)

# Form fields as the API names them; empty means "the API's default".
ADD_FIELDS = ("name", "address", "labels", "ssh_user", "ssh_port", "host_key_fingerprint", "cgroup")
# Where an error of the API's bootstrap names lands on the form.
BOOT_FIELD = {"hosts": "host", "selector": "host", "address": "host"}


def validation_errors(
    exc: ValidationError, rename: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Pydantic's errors by their top-level field (first message per field)."""
    found: dict[str, str] = {}
    for error in exc.errors():
        loc = [str(p) for p in error["loc"]]
        where = loc[0] if loc else ""
        found.setdefault((rename or {}).get(where, where), error["msg"])
    return found


def add_values(form: Mapping[str, Any]) -> dict[str, str]:
    values = {name: str(form.get(name) or "").strip() for name in ADD_FIELDS}
    values["trust_on_first_use"] = "on" if form.get("trust_on_first_use") else ""
    return values


def host_in_of(values: Mapping[str, str]) -> tuple[HostCreate | None, dict[str, str]]:
    """The HostCreate the API would receive for these form values, or the errors by field."""
    body: dict[str, Any] = {k: v for k, v in values.items() if v and k != "labels"}
    body["trust_on_first_use"] = bool(values["trust_on_first_use"])
    try:
        items = [item.strip() for item in values["labels"].split(",") if item.strip()]
        body["labels"] = hosts.parse_selector(items)
    except InvalidRequest as exc:
        return None, {"labels": exc.message}
    try:
        return HostCreate.model_validate(body), {}
    except ValidationError as exc:
        return None, validation_errors(exc)


def hosts_in_page(
    request: Request,
    who: Visitor,
    session: Session,
    settings: Settings,
    *,
    status: int = 200,
    values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
    chosen: tuple[str, ...] = (),
    boot_errors: Mapping[str, str] | None = None,
    uninstall_errors: Mapping[str, str] | None = None,
) -> Response:
    found = hosts.list_hosts(session=session)
    latest = bootstrap.latest_runs(session=session)
    rows = [
        (hosts.to_public(h, timeout_s=settings.heartbeat_timeout_s), latest.get(h.name))
        for h in found
    ]
    return page(
        request,
        "hosts_in.html",
        who,
        status=status,
        rows=rows,
        values=values or add_values({}),
        errors=errors or {},
        chosen=set(chosen),
        boot_errors=boot_errors or {},
        uninstall_errors=uninstall_errors or {},
    )


@dataclass(frozen=True)
class Desk:
    """An admin's Hosts in form, posted: what was sent, and the page to show it again."""

    request: Request
    who: Visitor
    form: FormData
    session: Session
    settings: Settings

    def again(self, status: int, **context: Any) -> Response:
        return hosts_in_page(
            self.request, self.who, self.session, self.settings, status=status, **context
        )


def admin_desk(
    request: Request, who: AdminDep, form: FormDep, session: SessionDep, settings: SettingsDep
) -> Desk:
    return Desk(request, who, form, session, settings)


DeskDep = Annotated[Desk, Depends(admin_desk)]


@router.get("/hosts-in")
def hosts_in(
    request: Request, who: VisitorDep, session: SessionDep, settings: SettingsDep
) -> Response:
    return hosts_in_page(request, who, session, settings)


@router.post("/hosts-in/hosts")
def add_host(desk: DeskDep, identities: IdentitiesDep) -> Response:
    values = add_values(desk.form)
    host_in, errors = host_in_of(values)
    status = 422
    if host_in is not None:
        try:
            host, join = hosts.register(
                session=desk.session, identities=identities, host_in=host_in
            )
        except ControllerError as exc:
            desk.session.rollback()
            # No field (Redis away after the host was saved): said above the form.
            errors, status = {exc.field or "": exc.message}, exc.status
        else:
            # The identity's secret is shown here once: this page is the answer, not a redirect.
            return page(
                desk.request, "hosts_in_added.html", desk.who, status=201, host=host, join=join
            )
    return desk.again(status, values=values, errors=errors)


@router.post("/hosts-in/bootstrap")
def bootstrap_hosts(desk: DeskDep, queue: QueueDep) -> Response:
    form = desk.form
    names = tuple(str(n) for n in form.getlist("host"))
    if not names:
        return desk.again(422, boot_errors={"host": "choose at least one host"})
    body: dict[str, Any] = {
        "hosts": list(names),
        "options": {"trust_on_first_use": bool(form.get("trust_on_first_use"))},
    }
    for name in ("parallel", "max_failures"):
        if str(form.get(name) or "").strip():
            body[name] = str(form.get(name)).strip()
    try:
        batch = bootstrap.start_batch(
            session=desk.session,
            queue=queue,
            batch_in=BatchCreate.model_validate(body),
            created_by=desk.who.name,
        )
    except ValidationError as exc:
        return desk.again(422, chosen=names, boot_errors=validation_errors(exc, rename=BOOT_FIELD))
    except ControllerError as exc:
        desk.session.rollback()
        field = BOOT_FIELD.get(exc.field or "", exc.field or "host")
        return desk.again(exc.status, chosen=names, boot_errors={field: exc.message})
    return redirect(f"/hosts-in/batches/{batch.id}")


@router.post("/hosts-in/uninstall")
def uninstall_host(desk: DeskDep, queue: QueueDep) -> Response:
    try:
        run = bootstrap.start(
            session=desk.session,
            queue=queue,
            host_name=str(desk.form.get("host") or ""),
            kind=RunKind.uninstall,
            options=BootstrapOptions(),
            created_by=desk.who.name,
        )
    except ControllerError as exc:
        desk.session.rollback()
        return desk.again(exc.status, uninstall_errors={"host": exc.message})
    return redirect(f"/hosts-in/runs/{run.id}")


def watch(
    request: Request, who: Visitor, runs: list[BootstrapRun], title: str | None, about: str = ""
) -> Response:
    """The progress page (with a title), or the fragment its script polls at `<page>/progress`
    until it says final."""
    context: dict[str, Any] = {
        "runs": runs,
        "steps": [s.name for s in runs[0].steps],
        "final": all(RunState(r.state).final for r in runs),
        "counts": {s.value: sum(r.state == s.value for r in runs) for s in RunState},
    }
    if title is None:
        return page(
            request, "hosts_in_progress.html", who, progress_url=request.url.path, **context
        )
    url = f"{request.url.path}/progress"
    return page(
        request, "hosts_in_batch.html", who, title=title, about=about, progress_url=url, **context
    )


def runs_of(
    session: Session, *, batch_id: str | None = None, run_id: str = ""
) -> list[BootstrapRun]:
    """A batch's runs, or one run; a 404 page when there is no such thing."""
    if batch_id is not None:
        batch = bootstrap.get_batch(session=session, batch_id=batch_id)
        runs = list(batch.runs) if batch is not None else []
    else:
        run = bootstrap.get_run(session=session, run_id=run_id)
        runs = [run] if run is not None else []
    if not runs:
        raise PageError(404, f"no bootstrap {'batch' if batch_id else 'run'} {batch_id or run_id}")
    return runs


@router.get("/hosts-in/batches/{batch_id}")
def batch_page(
    request: Request, who: VisitorDep, session: SessionDep, batch_id: IdPath
) -> Response:
    runs = runs_of(session, batch_id=batch_id)
    batch = runs[0].batch
    assert batch is not None
    stop = f", none started after {batch.max_failures} failed" if batch.max_failures else ""
    about = (
        f"{len(runs)} hosts, {batch.parallel} at once{stop}; started by"
        f" {batch.created_by or 'unknown'} at {fmt.utc(batch.created_at)}"
    )
    return watch(request, who, runs, "Bootstrap batch", about)


@router.get("/hosts-in/batches/{batch_id}/progress")
def batch_progress(
    request: Request, who: VisitorDep, session: SessionDep, batch_id: IdPath
) -> Response:
    return watch(request, who, runs_of(session, batch_id=batch_id), None)


@router.get("/hosts-in/runs/{run_id}")
def run_page(request: Request, who: VisitorDep, session: SessionDep, run_id: IdPath) -> Response:
    run = runs_of(session, run_id=run_id)[0]
    about = f"started by {run.created_by or 'unknown'} at {fmt.utc(run.created_at)}"
    return watch(request, who, [run], f"{run.kind.capitalize()} of {run.host_name}", about)


@router.get("/hosts-in/runs/{run_id}/progress")
def run_progress(
    request: Request, who: VisitorDep, session: SessionDep, run_id: IdPath
) -> Response:
    return watch(request, who, runs_of(session, run_id=run_id), None)
