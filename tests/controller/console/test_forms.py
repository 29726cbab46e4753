"""The template form read back: good values make the JobCreate the API would take, each bad
one an error under the API's field name with the API's message."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from controller.console.forms import errors_of, form_values, job_from_form, template_context
from controller.errors import InvalidRequest, Unavailable
from controller.jobs.models import JobCreate
from node_agent.programs import get_program

BASE = {"program": "cpu_profile", "targets": "names", "targets.names": "web-1", "duration": "10s"}


def form(**changes: str) -> dict[str, str]:
    """BASE with fields changed (`params_frequency` is `params.frequency`)."""
    out = dict(BASE)
    for key, value in changes.items():
        out[
            key.replace("_", ".", 1) if key.startswith(("params_", "scope_", "targets_")) else key
        ] = value
    return out


def api_message(body: dict[str, Any]) -> tuple[str, str]:
    """What the API's body validation says first: (dotted loc, msg)."""
    with pytest.raises(ValidationError) as caught:
        JobCreate.model_validate(body)
    first = caught.value.errors()[0]
    return ".".join(str(p) for p in first["loc"]), first["msg"]


GOOD = [
    (
        "defaults",
        {},
        {"program": "cpu_profile", "params": {}, "duration_s": 10.0, "interval_s": None},
    ),
    (
        "typed params, scope, interval",
        {
            "params_frequency": "99",
            "params_kernel": "false",
            "scope_pid": "42",
            "scope_comm": "nginx",
            "duration": "2m",
            "interval": "500ms",
        },
        {
            "params": {"frequency": 99, "kernel": False},
            "scope": {"pid": 42, "comm": "nginx", "cgroup": None},
            "duration_s": 120.0,
            "interval_s": 0.5,
        },
    ),
    ("bare seconds", {"duration": " 30 "}, {"duration_s": 30.0}),
    ("an hour", {"duration": "1h"}, {"duration_s": 3600.0}),
    ("empty param is the default", {"params_frequency": ""}, {"params": {}}),
    (
        "names split by spaces and commas",
        {"targets_names": "web-1, web-2  web-3,"},
        {"targets": {"hosts": ["web-1", "web-2", "web-3"], "selector": None, "all": False}},
    ),
    (
        "selector",
        {"targets": "selector", "targets_selector": "role=web,zone=eu-1"},
        {"targets": {"hosts": None, "selector": {"role": "web", "zone": "eu-1"}, "all": False}},
    ),
    ("all", {"targets": "all"}, {"targets": {"hosts": None, "selector": None, "all": True}}),
    (
        "choice param",
        {"program": "runqlat", "params_per": "pid"},
        {"program": "runqlat", "params": {"per": "pid"}},
    ),
]


@pytest.mark.parametrize(("name", "changes", "expected"), GOOD, ids=[g[0] for g in GOOD])
def test_good_values(name: str, changes: dict[str, str], expected: dict[str, Any]) -> None:
    job, errors = job_from_form(form(**changes))
    assert errors == {} and job is not None
    dumped = job.model_dump(mode="json")
    for key, value in expected.items():
        assert dumped[key] == value, key


def bad_cases() -> list[tuple[str, dict[str, str], str, str]]:
    spec = get_program("cpu_profile")
    freq = next(p for p in spec.params if p.name == "frequency")
    hosts_loc, no_hosts = api_message({**BASE, "duration_s": 1, "targets": {"hosts": []}})
    _, no_selector = api_message({**BASE, "duration_s": 1, "targets": {"selector": {}}})
    _, bad_key = api_message({**BASE, "duration_s": 1, "targets": {"selector": {"-x": "1"}}})
    _, zero = api_message({"program": "x", "duration_s": 0, "targets": {"all": True}})
    _, too_long = api_message({"program": "x", "duration_s": 1e6, "targets": {"all": True}})
    _, short_iv = api_message(
        {"program": "x", "duration_s": 1, "interval_s": 0.01, "targets": {"all": True}}
    )
    _, pid = api_message(
        {"program": "x", "duration_s": 1, "scope": {"pid": "x"}, "targets": {"all": True}}
    )
    _, required = api_message({"program": "x", "duration_s": 1})
    assert hosts_loc == "targets.hosts"
    return [
        ("bad int", {"params_frequency": "fast"}, "params.frequency",
         "params.frequency: expected int, got 'fast'"),
        ("float for int", {"params_frequency": "1.5"}, "params.frequency",
         "params.frequency: expected int, got '1.5'"),
        ("above max", {"params_frequency": "5000"}, "params.frequency",
         f"params.frequency: 5000 is above the maximum {freq.maximum:g}"),
        ("below min", {"params_frequency": "0"}, "params.frequency",
         f"params.frequency: 0 is below the minimum {freq.minimum:g}"),
        ("bad bool", {"params_kernel": "maybe"}, "params.kernel",
         "params.kernel: expected bool, got 'maybe'"),
        ("not a choice", {"program": "runqlat", "params_per": "host"}, "params.per",
         "params.per: 'host' is not one of none, pid, cgroup"),
        ("unknown param", {"params_bogus": "1"}, "params.bogus",
         "params.bogus: unknown parameter (this program takes: frequency, kernel, user,"
         " stack_entries, idle)"),
        ("unknown program", {"program": "nope"}, "program", "unknown program 'nope' (known: "),
        ("bad duration", {"duration": "10 parsecs"}, "duration_s",
         "bad duration '10 parsecs' (use e.g. 10s, 500ms, 2m, 1h)"),
        ("zero duration", {"duration": "0s"}, "duration_s", zero),
        ("duration too long", {"duration": "2d"}, "duration_s", too_long),
        ("no duration", {"duration": ""}, "duration_s", required),
        ("bad interval", {"interval": "often"}, "interval_s",
         "bad duration 'often' (use e.g. 10s, 500ms, 2m, 1h)"),
        ("interval too short", {"interval": "10ms"}, "interval_s", short_iv),
        ("bad pid", {"scope_pid": "x"}, "scope.pid", pid),
        ("scope the program refuses", {"program": "tcp_retransmits", "scope_pid": "1"},
         "scope.pid", "scope.pid: tcp_retransmits cannot be scoped by pid"),
        ("no names", {"targets_names": " , "}, "targets.hosts", no_hosts),
        ("bad host name", {"targets_names": "web_1!"}, "targets.hosts", "String should match"),
        ("empty selector", {"targets": "selector", "targets_selector": ""}, "targets.selector",
         no_selector),
        ("selector without =", {"targets": "selector", "targets_selector": "role"},
         "targets.selector", "bad 'role', want k=v with a label key and value"),
        ("selector bad key", {"targets": "selector", "targets_selector": "-x=1"},
         "targets.selector", bad_key),
        ("no target mode", {"targets": ""}, "targets", required),
    ]  # fmt: skip


BAD = bad_cases()


@pytest.mark.parametrize(("name", "changes", "field", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_values(name: str, changes: dict[str, str], field: str, message: str) -> None:
    job, errors = job_from_form(form(**changes))
    assert job is None
    assert field in errors, errors
    assert errors[field].startswith(message), errors


def test_every_bad_param_is_named_not_only_the_first() -> None:
    _, errors = job_from_form(
        form(params_frequency="x", params_kernel="maybe", duration="soon", targets_names="")
    )
    assert set(errors) == {"params.frequency", "params.kernel", "duration_s", "targets.hosts"}


def test_custom_needs_source_and_maps() -> None:
    _, errors = job_from_form(form(program="custom"))
    assert errors == {"source": "source: custom programs need 'source' (bcc C)"}


def test_custom_maps_are_read() -> None:
    job, errors = job_from_form(form(program="custom", source="", maps="hist:log2_hist:us"))
    assert job is None and "source" in errors
    _, errors = job_from_form(form(program="custom", source="int x;", maps="hist:bogus"))
    assert "maps" in errors


def test_service_errors_land_on_their_field() -> None:
    assert errors_of(InvalidRequest("too long", field="duration_s")) == {"duration_s": "too long"}
    assert errors_of(InvalidRequest("no host", field="targets.selector")) == {
        "targets.selector": "no host"
    }
    assert errors_of(InvalidRequest("bad", loc=("query", "x"))) == {"": "bad"}
    assert errors_of(Unavailable("the broker is unavailable")) == {"": "the broker is unavailable"}
    bad_param = InvalidRequest("params.x: no", field="template.params.x")
    assert errors_of(bad_param, under="template") == {"params.x": "params.x: no"}
    assert errors_of(InvalidRequest("bad", field="cron"), under="template") == {"cron": "bad"}
    assert errors_of(InvalidRequest("bad", field="template"), under="template") == {"": "bad"}


def test_a_template_round_trips_through_the_form() -> None:
    job, errors = job_from_form(
        form(
            params_frequency="99",
            params_idle="true",
            scope_cgroup="system.slice/x.service",
            duration="90s",
            interval="1m",
            targets="selector",
            targets_selector="role=web,zone=a",
        )
    )
    assert job is not None, errors
    again, errors = job_from_form(form_values(job))
    assert again == job, errors


def test_context_keeps_values_and_places_errors() -> None:
    values = form(params_frequency="5000", program="cpu_profile")
    _, errors = job_from_form(values)
    tf = template_context(
        values=values | {"": "x"},
        errors=errors | {"limits.max_rows": "too many", "": "the broker is down"},
        hosts=["web-1"],
        labels={"role": ["web", "db", "web"]},
    )["tf"]
    freq = next(f for f in tf["params"] if f["name"] == "params.frequency")
    assert freq["value"] == "5000" and freq["min"] == 1 and freq["max"] == 1000
    assert freq["error"] == errors["params.frequency"]
    assert tf["other"] == ["limits.max_rows: too many", "the broker is down"]
    assert tf["labels"] == {"role": ["db", "web"]}
    assert tf["names"] == "web-1" and tf["duration"] == "10s"


def test_context_of_an_unknown_program_shows_the_default() -> None:
    tf = template_context(values={"program": "<b>x</b>"}, errors={}, hosts=[], labels={})["tf"]
    assert tf["program"] == "syscalls"
    operator = template_context(
        values=None, errors={}, hosts=[], labels={}, may_run_admin_only=False
    )
    offered = [p["name"] for p in operator["tf"]["programs"]]
    assert "custom" not in offered and "bpftrace" not in offered  # admin-only programs
