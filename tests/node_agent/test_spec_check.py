"""ProgramSpec.check: one set of rules for a trace, run by the API, schedules and the agent."""

from __future__ import annotations

from typing import Any

import pytest

from node_agent.errors import BadParameter, PolicyViolation
from node_agent.programs import get_program
from node_agent.programs.spec import RefusedField
from node_agent.protocol import MAX_TRACE_S, MapDecl, MapKind, TraceRequest, TraceTemplate

COUNTS = [MapDecl(name="counts", kind=MapKind.counter)]
Refusal = type[BadParameter] | type[RefusedField]

# (case, program, request fields, confined, the error, the field it names)
REFUSED: list[tuple[str, str, dict[str, Any], bool, Refusal, str]] = [
    (
        "source for a catalog program",
        "syscalls",
        {"source": "int x;"},
        False,
        BadParameter,
        "source",
    ),
    ("maps for a catalog program", "syscalls", {"maps": COUNTS}, False, BadParameter, "maps"),
    ("custom without source", "custom", {"maps": COUNTS}, False, BadParameter, "source"),
    ("custom without maps", "custom", {"source": "int x;"}, False, BadParameter, "maps"),
    (
        "custom source the policy refuses",
        "custom",
        {"source": '#include "/etc/shadow"\nint x;', "maps": COUNTS},
        False,
        RefusedField,
        "source",
    ),
    (
        "unknown parameter",
        "syscalls",
        {"params": {"bogus": 1}},
        False,
        BadParameter,
        "params.bogus",
    ),
    (
        "scope the program cannot honour",
        "tcp_retransmits",
        {"scope": {"pid": 1}},
        False,
        BadParameter,
        "scope.pid",
    ),
    (
        "a confined agent scopes by cgroup",
        "tcp_retransmits",
        {},
        True,
        BadParameter,
        "scope.cgroup",
    ),
    (
        "cgroup climbing out",
        "syscalls",
        {"scope": {"cgroup": "../.."}},
        False,
        RefusedField,
        "scope.cgroup",
    ),
]


@pytest.mark.parametrize(
    ("program", "fields", "confined", "error", "field"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_check_refuses_naming_the_field(
    program: str, fields: dict[str, Any], confined: bool, error: Refusal, field: str
) -> None:
    request = TraceRequest(run_id="r", program=program, duration_s=1, **fields)
    with pytest.raises(error) as info:
        get_program(program).check(request, confined=confined)
    assert info.value.field == field


def test_a_refused_field_is_still_a_policy_violation_on_the_agent() -> None:
    """The agent reports ErrorCode.policy and a refusal for these, as before."""
    assert issubclass(RefusedField, PolicyViolation)


def test_check_returns_the_validated_parameters_with_defaults() -> None:
    template = TraceTemplate(program="cpu_profile", duration_s=1, params={"frequency": "99"})
    params = get_program("cpu_profile").check(template)
    assert params["frequency"] == 99


def test_custom_with_source_and_maps_passes() -> None:
    request = TraceRequest(run_id="r", program="custom", duration_s=1, source="int x;", maps=COUNTS)
    assert get_program("custom").check(request) == {}


def test_the_longest_trace_is_a_day_everywhere() -> None:
    TraceTemplate(program="syscalls", duration_s=MAX_TRACE_S)
    with pytest.raises(ValueError, match="duration_s"):
        TraceTemplate(program="syscalls", duration_s=MAX_TRACE_S + 1)
    with pytest.raises(ValueError, match="interval_s"):
        TraceTemplate(program="syscalls", duration_s=1, interval_s=MAX_TRACE_S + 1)
