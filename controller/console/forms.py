"""A trace template as an HTML form: fields from the catalog spec, read back into a JobCreate.

Errors are keyed by the dotted field the API names (`params.min_us`, `duration_s`,
`targets.selector`) with the API's own messages, so the form says what `POST /v1/jobs` would.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from controller.errors import ControllerError
from controller.jobs.models import JobCreate
from node_agent import durations
from node_agent.errors import BadParameter, UnknownProgram
from node_agent.programs import catalog, get_program
from node_agent.programs.spec import Param, ProgramSpec, RefusedField

DEFAULT_PROGRAM = "syscalls"
TARGET_MODES = ("names", "selector", "all")
SCOPE_FIELDS = (
    ("cgroup", "text", "cgroup v2 path, e.g. system.slice/nginx.service"),
    ("pid", "number", "process id"),
    ("comm", "text", "process name, e.g. nginx"),
)
# Request fields with a place of their own; deeper locations are shown there too.
_GROUPS = ("params", "scope", "targets", "limits")
_SPLIT = re.compile(r"[\s,]+")
_HINT_HOSTS = 30
# A str parameter this long (a bpftrace script) is a textarea, taken as typed (not stripped):
# the script's line numbers stay those of bpftrace's errors.
_TEXTAREA_LENGTH = 4096


def field_of(loc: Sequence[Any]) -> str:
    """The form field a located error belongs to: ('targets', 'selector', 'k', '[key]') is
    'targets.selector', ('duration_s',) is 'duration_s'."""
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in _GROUPS:
        return ".".join(parts[:2])
    return parts[0] if parts else ""


def errors_of(exc: ControllerError, *, under: str = "") -> dict[str, str]:
    """A service's refusal, next to the body field it names ('' when it names none).
    `under="template"`: a schedule's `template.params.x` is the template form's `params.x`."""
    loc = exc.loc or ()
    path = [str(p) for p in loc[1:]] if loc[:1] == ("body",) else []
    if under and path[:1] == [under]:
        path = path[1:]
    return {field_of(path): exc.message}


def field_text(form: Mapping[str, Any], key: str) -> str:
    value = form.get(key)
    return value.strip() if isinstance(value, str) else ""


def duration_field(text: str, field: str, errors: dict[str, str]) -> float | str | None:
    """Seconds in the agent's grammar; a bad text is an error on `field` (left to the model,
    which then says nothing more about it)."""
    if not text:
        return None
    seconds = durations.parse(text)
    if seconds is None:
        errors[field] = f"bad duration {text!r} (use e.g. 10s, 500ms, 2m, 1h)"
        return text
    return seconds


def _params(spec: ProgramSpec, form: Mapping[str, Any], errors: dict[str, str]) -> dict[str, Any]:
    """The parameters given (empty: the default), each checked by the spec on its own so
    that every bad one is named, not only the first."""
    given: dict[str, Any] = {}
    long_text = {f"params.{p.name}" for p in spec.params if _textarea(p)}
    for key in form:
        if not key.startswith("params.") or not (raw := field_text(form, key)):
            continue
        name = key.removeprefix("params.")
        if key in long_text:  # as typed, but a browser sends its lines ending in CRLF
            raw = form[key].replace("\r\n", "\n")
        try:
            given[name] = spec.validate_params({name: raw})[name]
        except BadParameter as exc:
            errors[exc.field] = exc.message
    return given


def _targets(form: Mapping[str, Any], errors: dict[str, str]) -> dict[str, Any] | None:
    mode = field_text(form, "targets")
    if mode == "names":
        return {"hosts": [n for n in _SPLIT.split(field_text(form, "targets.names")) if n]}
    if mode == "selector":
        selector: dict[str, str] = {}
        for item in (i for i in _SPLIT.split(field_text(form, "targets.selector")) if i):
            key, sep, value = item.partition("=")
            if not sep:
                errors["targets.selector"] = f"bad {item!r}, want k=v with a label key and value"
            selector[key] = value
        return {"selector": selector}
    if mode == "all":
        return {"all": True}
    return None  # the model says the field is required


def _maps(text: str) -> list[dict[str, str]]:
    """'hist:log2_hist:us, calls:counter' -> map declarations (name:kind[:unit])."""
    items = (i.split(":", 2) for i in _SPLIT.split(text) if i)
    return [dict(zip(("name", "kind", "unit"), parts, strict=False)) for parts in items]


def job_from_form(form: Mapping[str, Any]) -> tuple[JobCreate | None, dict[str, str]]:
    """The job the form describes, or None and every error by the API's field name."""
    errors: dict[str, str] = {}
    program = field_text(form, "program")
    spec: ProgramSpec | None = None
    try:
        spec = get_program(program)
    except UnknownProgram as exc:
        errors["program"] = exc.message
    data: dict[str, Any] = {
        "program": program,
        "params": _params(spec, form, errors) if spec else {},
        "scope": {f: v for f, _, _ in SCOPE_FIELDS if (v := field_text(form, f"scope.{f}"))},
        "duration_s": duration_field(field_text(form, "duration"), "duration_s", errors),
        "interval_s": duration_field(field_text(form, "interval"), "interval_s", errors),
    }
    if (targets := _targets(form, errors)) is not None:
        data["targets"] = targets
    if spec is not None and spec.source_policy is not None:
        data["source"] = form.get("source") or None
        data["maps"] = _maps(field_text(form, "maps"))
    if data["duration_s"] is None:
        del data["duration_s"]  # required: the model names it
    try:
        job = JobCreate.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            errors.setdefault(field_of(error["loc"]), error["msg"])
        return None, errors
    if errors or spec is None:
        return None, errors
    try:
        spec.check(job)  # scopes, custom source: what the service and the agents check too
    except (BadParameter, RefusedField) as exc:
        return None, {exc.field: exc.message}
    return job, {}


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def form_values(job: JobCreate) -> dict[str, str]:
    """A template as the form's fields, for editing it (a schedule's) or starting from it."""
    values = {"program": job.program, "duration": durations.text(job.duration_s)}
    values["interval"] = durations.text(job.interval_s) if job.interval_s else ""
    values |= {f"params.{k}": _shown(v) for k, v in job.params.items()}
    values |= {f"scope.{k}": _shown(v) for k, v in job.scope.model_dump(exclude_none=True).items()}
    targets = job.targets
    if targets.hosts is not None:
        values |= {"targets": "names", "targets.names": ", ".join(targets.hosts)}
    elif targets.selector is not None:
        pairs = ",".join(f"{k}={v}" for k, v in targets.selector.items())
        values |= {"targets": "selector", "targets.selector": pairs}
    else:
        values["targets"] = "all"
    if job.source is not None:
        values["source"] = job.source
    if job.maps:
        values["maps"] = ", ".join(f"{m.name}:{m.kind.value}:{m.unit}" for m in job.maps)
    return values


def _textarea(param: Param) -> bool:
    return param.type == "str" and (param.max_length or 0) >= _TEXTAREA_LENGTH


def _param_field(param: Param, raw: str | None, error: str | None) -> dict[str, Any]:
    described = param.describe()
    options: list[str] = []
    if param.type == "bool" or param.choices is not None:
        control = "select"
        options = list(param.choices) if param.choices else ["true", "false"]
    elif _textarea(param):
        control = "textarea"
    else:
        control = "number" if param.type in ("int", "float") else "text"
    value = _shown(param.default) if raw is None else raw
    if control == "select" and value not in options:
        options.append(value)  # what the visitor sent, kept to be corrected
    return {
        "name": f"params.{param.name}",
        "id": f"param-{param.name}",
        "label": param.name,
        "type": param.type,
        "control": control,
        "options": options,
        "help": param.help,
        "min": described.get("minimum"),
        "max": described.get("maximum"),
        "max_length": param.max_length,
        "step": "1" if param.type == "int" else "any",
        "default": _shown(param.default),
        "value": value,
        "error": error,
    }


def template_context(
    *,
    values: JobCreate | dict[str, Any] | None,
    errors: Mapping[str, str],
    hosts: Sequence[str],
    labels: Mapping[str, Sequence[str]],
    may_run_admin_only: bool = True,
    schedulable: bool = False,
) -> dict[str, Any]:
    """What `_template_form.html` shows, under `tf`: the catalog's programs, the chosen one's
    parameters with their bounds, scope, targets, duration and interval, the visitor's values
    kept and each error beside its field (errors with no field of their own on top)."""
    raw = form_values(values) if isinstance(values, JobCreate) else dict(values or {})
    got = {k: v for k, v in raw.items() if isinstance(v, str)}
    programs = [
        s
        for s in catalog().values()
        if (may_run_admin_only or not s.admin_only)
        and not (schedulable and s.source_policy is not None)  # schedules run no custom C
    ]
    chosen = got.get("program", "")
    spec = next((s for s in programs if s.name == chosen), None)
    if spec is None:
        spec = next((s for s in programs if s.name == DEFAULT_PROGRAM), programs[0])
    params = [_param_field(p, got.get(f"params.{p.name}"), None) for p in spec.params]
    for field in params:
        field["error"] = errors.get(field["name"])
    scope = [
        {"name": f"scope.{f}", "id": f"scope-{f}", "label": f, "control": control, "hint": hint,
         "value": got.get(f"scope.{f}", ""), "error": errors.get(f"scope.{f}")}
        for f, control, hint in SCOPE_FIELDS
        if f in spec.scopes or got.get(f"scope.{f}") or errors.get(f"scope.{f}")
    ]  # fmt: skip
    mode = got.get("targets", "names")
    custom = spec.source_policy is not None
    placed = {"program", "targets", "targets.hosts", "targets.selector", "targets.all"}
    placed |= {"duration_s", "interval_s"} | {f["name"] for f in params + scope}
    placed |= {"source", "maps"} if custom else set()
    other = [
        m if not field or m.startswith(f"{field}:") else f"{field}: {m}"
        for field, m in errors.items()
        if field not in placed
    ]
    names = list(hosts)
    return {
        "tf": {
            "programs": [{"name": s.name, "summary": s.summary} for s in programs],
            "program": spec.name,
            "summary": spec.summary,
            "scope_note": spec.scope_note,
            "params": params,
            "scope": scope,
            "mode": mode if mode in TARGET_MODES else "names",
            "names": got.get("targets.names", ""),
            "selector": got.get("targets.selector", ""),
            "duration": got.get("duration", "10s"),
            "interval": got.get("interval", ""),
            "custom": custom,
            "source": got.get("source", ""),
            "maps": got.get("maps", ""),
            "errors": dict(errors),
            "other": other,
            "hosts": names[:_HINT_HOSTS],
            "more_hosts": max(0, len(names) - _HINT_HOSTS),
            "labels": {k: sorted(set(v)) for k, v in sorted(labels.items())},
        }
    }
