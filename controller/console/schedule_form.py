"""A schedule as an HTML form: its timing, policies and retention, and the trace template
through the job form's fields (console/forms.py). Read back into the API's ScheduleCreate or
ScheduleUpdate; every error is keyed by the field the API names, with the API's message.

The form's `interval` (#schedule-interval) is the schedule's timing; the template's own
snapshot interval is not on this form: a continuous schedule's snapshots come every schedule
interval, and the others keep a template's stored one when edited.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from zoneinfo import available_timezones

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from controller.auth.models import Role
from controller.console import forms
from controller.console.sessions import Visitor
from controller.console.web import page
from controller.errors import ControllerError
from controller.hosts import service as hosts_service
from controller.jobs.models import JobCreate
from controller.schedules.models import Schedule, ScheduleCreate, ScheduleUpdate
from node_agent import durations

# Form fields of the schedule itself, and the API field each one is.
DURATIONS = {
    "interval": "interval_s",
    "retention.max_age": "retention.max_age_s",
    "misfire_grace": "misfire_grace_s",
}
FLAGS = ("continuous", "allow_overlap", "enabled")
BOTH = "give exactly one of cron or interval_s"


@cache
def time_zones() -> list[str]:
    return sorted(available_timezones())


@dataclass
class Read:
    """What a posted form says: the API's body (or None) and the errors by API field name;
    the template's own errors are keyed as its form shows them (`params.x`, `duration_s`)."""

    body: BaseModel | None = None
    errors: dict[str, str] = field(default_factory=dict)
    template_errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.body is not None and not self.errors and not self.template_errors

    def refused(self, exc: ControllerError) -> None:
        """A service's refusal, placed beside the field it names."""
        if exc.field and exc.field.startswith("template."):
            self.template_errors.update(forms.errors_of(exc, under="template"))
        else:
            self.place(exc.field.split(".") if exc.field else [], exc.message)

    def place(self, loc: Sequence[Any], message: str) -> None:
        parts = [str(p) for p in loc]
        if parts[:1] == ["template"]:
            self.template_errors.setdefault(forms.field_of(parts[1:]), message)
        elif not parts:  # the model's own check: the timing is the culprit
            self.errors.setdefault("cron", message)
        else:
            self.errors.setdefault(".".join(parts), message)


def _seconds(form: Mapping[str, Any], key: str, read: Read) -> float | str | None:
    """A duration field in the agent's grammar, or its error under the API's name."""
    return forms.duration_field(forms.field_text(form, key), DURATIONS[key], read.errors)


def _template(form: Mapping[str, Any], read: Read) -> JobCreate | None:
    """The template's fields without the schedule's `interval`: job_from_form reads that name
    as a job's snapshot interval."""
    fields = {k: v for k, v in form.items() if k != "interval"}
    job, errors = forms.job_from_form(fields)
    read.template_errors.update(errors)
    return job


def _timing(form: Mapping[str, Any], read: Read) -> dict[str, Any]:
    return {
        "cron": forms.field_text(form, "cron") or None,
        "time_zone": forms.field_text(form, "time_zone") or "UTC",
        "interval_s": _seconds(form, "interval", read),
    }


def _policies(form: Mapping[str, Any], read: Read) -> dict[str, Any]:
    policies = {
        "retention": {
            "max_runs": forms.field_text(form, "retention.max_runs") or None,
            "max_age_s": _seconds(form, "retention.max_age", read),
        },
        "allow_overlap": "allow_overlap" in form,
    }
    grace = _seconds(form, "misfire_grace", read)
    return policies if grace is None else policies | {"misfire_grace_s": grace}


def _validate(
    model: type[BaseModel], data: dict[str, Any], read: Read, job: JobCreate | None
) -> None:
    if job is not None:
        data["template"] = job.model_dump(mode="json", exclude_none=True)
    try:
        read.body = model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            if job is None and error["loc"][:1] == ("template",):
                continue  # job_from_form said what is wrong with the template
            read.place(error["loc"], error["msg"])  # after a bad duration's own words


def read_create(form: Mapping[str, Any]) -> Read:
    read = Read()
    job = _template(form, read)
    data = {"name": forms.field_text(form, "name"), **_timing(form, read), **_policies(form, read)}
    data |= {"continuous": "continuous" in form, "enabled": "enabled" in form}
    _validate(ScheduleCreate, data, read, job)
    return read


def read_update(form: Mapping[str, Any], schedule: Schedule) -> Read:
    read = Read()
    job = _template(form, read)
    if job is not None and not schedule.continuous and schedule.template.get("interval_s"):
        job = job.model_copy(update={"interval_s": schedule.template["interval_s"]})
    timing = _timing(form, read)
    if timing["cron"] is None and timing["interval_s"] is None and "interval_s" not in read.errors:
        read.errors["cron"] = BOTH  # an update may leave both out; this form always has one
    _validate(ScheduleUpdate, {**timing, **_policies(form, read)}, read, job)
    return read


def span(seconds: float | None) -> str:
    """Seconds in the duration grammar, for a field's value: 300 -> '5m'; None -> ''."""
    return durations.text(seconds) if seconds else ""


def stored_values(schedule: Schedule) -> dict[str, str]:
    """A stored schedule as the form's fields, to edit it."""
    values = {
        "name": schedule.name,
        "cron": schedule.cron or "",
        "time_zone": schedule.timezone,
        "interval": span(schedule.interval_s) if schedule.cron is None else "",
        "retention.max_runs": str(schedule.max_runs or ""),
        "retention.max_age": span(schedule.max_age_s),
        "misfire_grace": span(schedule.misfire_grace_s) or "0s",
    }
    values |= {flag: "on" for flag in FLAGS if getattr(schedule, flag)}
    return values


def context(
    *,
    values: Mapping[str, Any],
    template: JobCreate | Mapping[str, Any] | None,
    read: Read | None,
    hosts: Sequence[str],
    labels: Mapping[str, Sequence[str]],
    admin: bool = False,
) -> dict[str, Any]:
    """What schedule_form.html shows: the schedule's fields, their errors, and the template's
    fields (`tf`) with theirs; an error with no field of its own goes on top."""
    read = read or Read()
    shown = {k: v for k, v in values.items() if isinstance(v, str)}
    if not isinstance(template, JobCreate) and template is not None:
        template = {k: v for k, v in template.items() if k != "interval"}
    tf = forms.template_context(
        values=template,
        errors=read.template_errors,
        hosts=hosts,
        labels=labels,
        may_run_admin_only=admin,
        schedulable=True,
    )
    tf["tf"]["snapshot_interval"] = False
    placed = {"name", "cron", "time_zone", "interval_s", "continuous", "enabled"}
    placed |= {"allow_overlap", "misfire_grace_s", "retention.max_runs", "retention.max_age_s"}
    other = [f"{k}: {m}" if k else m for k, m in read.errors.items() if k not in placed]
    return {
        "v": shown,
        "errors": read.errors,
        "other": other,
        "zones": time_zones(),
        **tf,
    }


def known_hosts(session: Session) -> tuple[list[str], dict[str, list[str]]]:
    """Host names and label values, as hints beside the template's targets."""
    found = hosts_service.list_hosts(session=session)
    return [h.name for h in found], hosts_service.label_values(found)


def show(
    request: Request,
    who: Visitor,
    session: Session,
    *,
    values: Mapping[str, Any],
    template: JobCreate | Mapping[str, Any] | None,
    read: Read | None = None,
    status: int = 200,
    to: tuple[Schedule, str] | None = None,
) -> Response:
    """The new-schedule form, or with `to` (the schedule, its URL name) the edit form."""
    hosts, labels = known_hosts(session)
    shown = context(
        values=values,
        template=template,
        read=read,
        hosts=hosts,
        labels=labels,
        admin=who.may(Role.admin),
    )
    schedule, ref = to or (None, "")
    back = f"/schedules/{ref}" if ref else "/schedules"
    action = f"{back}/edit" if ref else "/schedules/new"
    return page(
        request,
        "schedule_form.html",
        who,
        status=status,
        schedule=schedule,
        action=action,
        back=back,
        **shown,
    )
