"""The catalog and request validation, without the kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

from node_agent.errors import (
    BadParameter,
    LimitExceeded,
    PolicyViolation,
    UnknownProgram,
    UnsupportedProgram,
)
from node_agent.programs import catalog, get_program
from node_agent.programs.spec import Param
from node_agent.protocol import Scope, TraceRequest
from node_agent.scope import scope_defines
from node_agent.trace import prepare

REQUIRED = {
    "syscalls",
    "syscall_latency",
    "runqlat",
    "biolatency",
    "tcp_retransmits",
    "execs",
    "opens",
    "cpu_profile",
    "custom",
}


def test_catalog_has_every_core_program_with_its_source() -> None:
    specs = catalog()
    assert set(specs) >= REQUIRED
    for spec in specs.values():
        assert spec.summary and spec.output
        if spec.name != "custom" and spec.engine == "bcc":  # bpftrace has a script, no C
            assert spec.source_path is not None and spec.source_path.is_file()
            assert spec.source_path.parent.name == spec.name
        for p in spec.params:
            assert p.coerce(p.default) == p.default, (spec.name, p.name)


def test_unknown_program_names_the_known_ones() -> None:
    with pytest.raises(UnknownProgram, match="syscalls"):
        get_program("nope")


@pytest.mark.parametrize(
    ("param", "raw", "expected"),
    [
        (Param("n", "int", 1, "", minimum=1, maximum=10), "7", 7),
        (Param("f", "float", 1.0, "", minimum=0.5), "2.5", 2.5),
        (Param("b", "bool", False, ""), "yes", True),
        (Param("b", "bool", True, ""), "off", False),
        (Param("u", "str", "usec", "", choices=("usec", "msec")), "msec", "msec"),
    ],
)
def test_param_coercion(param: Param, raw: object, expected: object) -> None:
    assert param.coerce(raw) == expected


@pytest.mark.parametrize(
    ("param", "raw", "message"),
    [
        (Param("n", "int", 1, "", minimum=1, maximum=10), "11", "above the maximum"),
        (Param("n", "int", 1, "", minimum=1, maximum=10), 0, "below the minimum"),
        (Param("n", "int", 1, ""), "x", "expected int"),
        (Param("n", "int", 1, ""), 1.5, "expected int"),
        (Param("n", "int", 1, ""), True, "expected int"),
        (Param("f", "float", 1.0, ""), "nan", "expected float"),
        (Param("b", "bool", False, ""), "maybe", "expected bool"),
        (Param("u", "str", "usec", "", choices=("usec", "msec")), "sec", "not one of"),
    ],
)
def test_param_rejections_name_the_field(param: Param, raw: object, message: str) -> None:
    with pytest.raises(BadParameter, match=message) as info:
        param.coerce(raw)
    assert info.value.field == f"params.{param.name}"


def test_unknown_parameter_is_rejected() -> None:
    with pytest.raises(BadParameter) as info:
        get_program("syscalls").validate_params({"per_proces": True})
    assert info.value.field == "params.per_proces"


def test_prepare_builds_scope_and_limit_flags(cgroup2_root: Path) -> None:
    request = TraceRequest(
        run_id="r", program="syscalls", duration_s=1, scope=Scope(pid=42, comm="nginx")
    )
    prepared = prepare(request)
    assert "-DFT_SCOPE_PID=42" in prepared.cflags
    assert "-DFT_SCOPE_COMM={110,103,105,110,120,0}" in prepared.cflags
    assert "-DFT_MAP_ENTRIES=10240" in prepared.cflags
    assert "-DFT_PER_PROCESS=1" in prepared.cflags
    assert "ft_in_scope" in prepared.source


def test_cgroup_scope_resolves_to_id_and_level(make_cgroup) -> None:  # type: ignore[no-untyped-def]
    group = make_cgroup("scope")
    defines = scope_defines(Scope(cgroup=group.name))
    assert defines["FT_SCOPE_CGROUP_ID"] == f"{group.stat().st_ino}ULL"
    assert defines["FT_SCOPE_CGROUP_LEVEL"] == 1
    assert scope_defines(Scope(cgroup=str(group))) == defines


def test_missing_cgroup_is_a_bad_scope(cgroup2_root: Path) -> None:
    with pytest.raises(BadParameter) as info:
        scope_defines(Scope(cgroup="/no/such/group"))
    assert info.value.field == "scope.cgroup"


def test_cgroup_path_cannot_escape_the_hierarchy(cgroup2_root: Path) -> None:
    with pytest.raises(PolicyViolation, match=r"scope\.cgroup"):
        scope_defines(Scope(cgroup="../../../etc"))


def test_duration_over_the_agent_limit_is_refused() -> None:
    request = TraceRequest(run_id="r", program="syscalls", duration_s=100)
    with pytest.raises(LimitExceeded, match="duration_s"):
        prepare(request, max_duration_s=10)


def test_custom_needs_the_agent_to_allow_it() -> None:
    request = TraceRequest(
        run_id="r",
        program="custom",
        duration_s=1,
        source="int x;",
        maps=[{"name": "counts", "kind": "counter"}],  # type: ignore[list-item]
    )
    with pytest.raises(UnsupportedProgram, match="allow_custom"):
        prepare(request)


def test_request_validation_names_fields() -> None:
    with pytest.raises(ValueError, match="duration_s"):
        TraceRequest(run_id="r", program="syscalls", duration_s=0)
    # The custom source rule is the program's (ProgramSpec.check), the same at API and agent.
    request = TraceRequest(run_id="r", program="syscalls", duration_s=1, source="int x;")
    with pytest.raises(BadParameter, match="source") as info:
        get_program("syscalls").check(request)
    assert info.value.field == "source"
    with pytest.raises(ValueError, match="comm"):
        Scope(comm="a-name-longer-than-fifteen")
