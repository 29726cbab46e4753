"""A cgroup scope stays inside the agent's base cgroup (or the hierarchy), on the real cgroupfs."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node_agent.errors import BadParameter, PolicyViolation
from node_agent.protocol import Scope
from node_agent.scope import cgroup_path_problem, resolve_cgroup, scope_defines

pytestmark = pytest.mark.root

Groups = dict[str, Path]


@pytest.fixture
def groups(make_cgroup: Callable[[str], Path], cgroup2_root: Path) -> Iterator[Groups]:
    """base (with base/sub), a sibling whose name extends base's, and an unrelated group."""
    base = make_cgroup("base")
    made = {"root": cgroup2_root, "base": base, "sub": base / "sub"}
    made["sub"].mkdir()
    made["sibling"] = make_cgroup("base-sibling")
    made["other"] = make_cgroup("other")
    yield made
    made["sub"].rmdir()


# (case, requested path, what it resolves to or the error); {name} is a group's name
# ({root} the mount point); the agent's base is `base`.
CONFINED: list[tuple[str, str | None, str | type[Exception]]] = [
    ("no cgroup: the base itself", None, "base"),
    ("relative: inside the base", "sub", "sub"),
    ("dot and double slashes fold away", ".//sub/./", "sub"),
    ("dot is the base", ".", "base"),
    ("absolute inside the base", "/{base}/sub", "sub"),
    ("full mount path inside the base", "{root}/{base}/sub", "sub"),
    ("absolute: the base", "/{base}", "base"),
    ("two levels up", "../..", PolicyViolation),
    ("up from inside", "sub/../../{other}", PolicyViolation),
    ("the hierarchy's root", "/", PolicyViolation),
    ("another group", "/{other}", PolicyViolation),
    ("a sibling whose name extends the base's", "/{sibling}", PolicyViolation),
    ("the mount point", "{root}", PolicyViolation),
    ("another group by mount path", "{root}/{other}", PolicyViolation),
    ("NUL", "sub\x00", PolicyViolation),
    ("newline", "sub\n", PolicyViolation),
    ("empty", "", PolicyViolation),
    ("a group that does not exist", "nosuch", BadParameter),
]

UNCONFINED: list[tuple[str, str | None, str | type[Exception]]] = [
    ("relative to the root", "{other}", "other"),
    ("absolute", "/{other}", "other"),
    ("full mount path", "{root}/{other}", "other"),
    ("folded", "//{base}/./sub//", "sub"),
    ("climbing out of the hierarchy", "../../../etc", PolicyViolation),
    ("climbing from the root", "/../{other}", PolicyViolation),
    ("climbing by mount path", "{root}/../..", PolicyViolation),
]


def _fill(path: str | None, groups: Groups) -> str | None:
    if path is None:
        return None
    names = {k: str(v) if k == "root" else v.name for k, v in groups.items() if k != "sub"}
    return path.format(**names)


def _check(groups: Groups, requested: str | None, base: str | None, expected: object) -> None:
    if isinstance(expected, type):
        with pytest.raises(expected) as info:  # type: ignore[call-overload]
            resolve_cgroup(requested, base)
        assert str(info.value).startswith("scope.cgroup"), info.value
        if expected is PolicyViolation:
            assert info.value.to_error().code.value == "policy"
        return
    path, cgroup_id, level = resolve_cgroup(requested, base)
    want = groups[str(expected)]
    assert path == want
    assert cgroup_id == os.stat(want).st_ino
    assert level == len(want.relative_to(groups["root"]).parts)


@pytest.mark.parametrize(
    ("requested", "expected"), [c[1:] for c in CONFINED], ids=[c[0] for c in CONFINED]
)
def test_a_confined_agent_traces_only_inside_its_base(
    groups: Groups, requested: str | None, expected: object
) -> None:
    _check(groups, _fill(requested, groups), groups["base"].name, expected)


@pytest.mark.parametrize(
    ("requested", "expected"), [c[1:] for c in UNCONFINED], ids=[c[0] for c in UNCONFINED]
)
def test_an_unconfined_agent_traces_only_inside_the_hierarchy(
    groups: Groups, requested: str | None, expected: object
) -> None:
    _check(groups, _fill(requested, groups), None, expected)


def test_the_base_may_be_given_by_mount_path_or_absolute(groups: Groups) -> None:
    for base in (str(groups["base"]), "/" + groups["base"].name):
        path, _, _ = resolve_cgroup("sub", base)
        assert path == groups["sub"]


def test_a_base_that_does_not_exist_is_a_bad_scope(groups: Groups) -> None:
    with pytest.raises(BadParameter, match="this agent's cgroup"):
        resolve_cgroup("sub", "fleettrace-no-such-base")


def test_a_confined_agent_always_has_a_cgroup_scope(groups: Groups) -> None:
    defines = scope_defines(Scope(pid=7), cgroup_base=groups["base"].name)
    assert defines["FT_SCOPE_CGROUP_ID"] == f"{groups['base'].stat().st_ino}ULL"
    assert defines["FT_SCOPE_PID"] == 7


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("../..", "'..'"),
        ("a/../b", "'..'"),
        ("/..", "'..'"),
        ("a\x00b", "control"),
        ("a\tb", "control"),
        ("a\x7fb", "control"),
        ("   ", "empty"),
        ("x" * 4097, "4096"),
    ],
)
def test_a_path_refused_on_its_face(path: str, problem: str) -> None:
    why = cgroup_path_problem(path)
    assert why is not None and problem in why, why


@pytest.mark.parametrize("path", ["a", "/a/b", "a..b/c", "...", "/sys/fs/cgroup/a.slice"])
def test_a_path_that_may_be_looked_up(path: str) -> None:
    assert cgroup_path_problem(path) is None
