"""Hosts in: add a host, bootstrap one or many over SSH and watch each step, uninstall."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

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


def errors_of(exc: ValidationError, rename: Mapping[str, str] | None = None) -> dict[str, str]:
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
        return None, errors_of(exc)


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


@router.get("/hosts-in")
def hosts_in(
    request: Request, who: VisitorDep, session: SessionDep, settings: SettingsDep
) -> Response:
    return hosts_in_page(request, who, session, settings)


@router.post("/hosts-in/hosts")
def add_host(
    request: Request,
    who: AdminDep,
    form: FormDep,
    session: SessionDep,
    settings: SettingsDep,
    identities: IdentitiesDep,
) -> Response:
    values = add_values(form)
    host_in, errors = host_in_of(values)
    status = 422
    if host_in is not None:
        try:
            host, credential = hosts.register(
                session=session, identities=identities, host_in=host_in
            )
        except ControllerError as exc:
            session.rollback()
            errors, status = {exc.field or "name": exc.message}, exc.status
        else:
            # The identity's secret is shown here once: this page is the answer, not a redirect.
            return page(request, "hosts_in_added.html", who, status=201, host=host, join=credential)
    return hosts_in_page(
        request, who, session, settings, status=status, values=values, errors=errors
    )


@router.post("/hosts-in/bootstrap")
def bootstrap_hosts(
    request: Request,
    who: AdminDep,
    form: FormDep,
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
) -> Response:
    names = tuple(str(n) for n in form.getlist("host"))
    body: dict[str, Any] = {"hosts": list(names) or None, "selector": None}
    for name in ("parallel", "max_failures"):
        if str(form.get(name) or "").strip():
            body[name] = str(form.get(name)).strip()
    body["options"] = {"trust_on_first_use": bool(form.get("trust_on_first_use"))}
    errors: dict[str, str] = {}
    status = 422
    if not names:
        errors["host"] = "choose at least one host"
    else:
        try:
            batch = bootstrap.start_batch(
                session=session,
                queue=queue,
                batch_in=BatchCreate.model_validate(body),
                created_by=who.name,
            )
            return redirect(f"/hosts-in/batches/{batch.id}")
        except ValidationError as exc:
            errors = errors_of(exc, rename=BOOT_FIELD)
        except ControllerError as exc:
            session.rollback()
            errors = {BOOT_FIELD.get(exc.field or "", exc.field or "host"): exc.message}
            status = exc.status
    return hosts_in_page(
        request, who, session, settings, status=status, chosen=names, boot_errors=errors
    )


@router.post("/hosts-in/uninstall")
def uninstall_host(
    request: Request,
    who: AdminDep,
    form: FormDep,
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
) -> Response:
    name = str(form.get("host") or "")
    try:
        run = bootstrap.start(
            session=session,
            queue=queue,
            host_name=name,
            kind=RunKind.uninstall,
            options=BootstrapOptions(),
            created_by=who.name,
        )
    except ControllerError as exc:
        session.rollback()
        return hosts_in_page(
            request,
            who,
            session,
            settings,
            status=exc.status,
            uninstall_errors={"host": exc.message},
        )
    return redirect(f"/hosts-in/runs/{run.id}")


def progress(runs: list[BootstrapRun], url: str) -> dict[str, Any]:
    """What the progress fragment shows; final once every run is."""
    return {
        "runs": runs,
        "steps": [s.name for s in runs[0].steps] if runs else [],
        "final": all(RunState(r.state).final for r in runs),
        "progress_url": url,
        "counts": {s.value: sum(r.state == s.value for r in runs) for s in RunState},
    }


def batch_runs(session: Session, batch_id: IdPath) -> list[BootstrapRun]:
    batch = bootstrap.get_batch(session=session, batch_id=batch_id)
    if batch is None:
        raise PageError(404, f"no bootstrap batch {batch_id}")
    return list(batch.runs)


def one_run(session: Session, run_id: IdPath) -> list[BootstrapRun]:
    run = bootstrap.get_run(session=session, run_id=run_id)
    if run is None:
        raise PageError(404, f"no bootstrap run {run_id}")
    return [run]


@router.get("/hosts-in/batches/{batch_id}")
def batch_page(
    request: Request, who: VisitorDep, session: SessionDep, batch_id: IdPath
) -> Response:
    runs = batch_runs(session, batch_id)
    shown = progress(runs, f"/hosts-in/batches/{batch_id}/progress")
    return page(request, "hosts_in_batch.html", who, title="Bootstrap batch", **shown)


@router.get("/hosts-in/batches/{batch_id}/progress")
def batch_progress(
    request: Request, who: VisitorDep, session: SessionDep, batch_id: str
) -> Response:
    shown = progress(batch_runs(session, batch_id), request.url.path)
    return page(request, "hosts_in_progress.html", who, **shown)


@router.get("/hosts-in/runs/{run_id}")
def run_page(request: Request, who: VisitorDep, session: SessionDep, run_id: IdPath) -> Response:
    runs = one_run(session, run_id)
    shown = progress(runs, f"/hosts-in/runs/{run_id}/progress")
    title = f"{runs[0].kind.capitalize()} of {runs[0].host_name}"
    return page(request, "hosts_in_batch.html", who, title=title, **shown)


@router.get("/hosts-in/runs/{run_id}/progress")
def run_progress(
    request: Request, who: VisitorDep, session: SessionDep, run_id: IdPath
) -> Response:
    shown = progress(one_run(session, run_id), request.url.path)
    return page(request, "hosts_in_progress.html", who, **shown)
