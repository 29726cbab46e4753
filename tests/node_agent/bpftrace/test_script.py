"""A bpftrace script read without bpftrace: structure, policy, map functions, instrumentation."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from node_agent.bpftrace.instrument import bpftrace_string, instrument, scope_predicate
from node_agent.bpftrace.script import (
    MAX_LINES,
    MAX_PROBES,
    check_script,
    key_kinds,
    lhist_args,
    map_functions,
)
from node_agent.bpftrace.syntax import parse
from node_agent.errors import BadParameter, PolicyViolation
from node_agent.protocol import Scope

TOOL = """\
#include <linux/sched.h>
#define MAX_ARGS 20
struct data_t { int a; struct { int b; } inner; };
/* a comment with { braces } and system("id") */
uprobe:/bin/bash:readline, uprobe:/usr/lib/*.so:f
/comm == "ba/sh" && pid / 2 > 0/
{
    @[comm] = count();            // system("not a call") in a comment
    @lat[pid, comm] = hist(arg0);
    @l = lhist(arg1, -10, 0x100, 5);
    $s = "}{ system(\\"x\\") /";
    @last[tid] = str(arg0);
    @n++;
}
tracepoint:syscalls:sys_enter_openat { @bytes = sum(args->flags); @lo = min(1); @hi = max(2);
  @mean = avg(3); @st = stats(4); @task = curtask->signal; }
BEGIN { printf("hello /* not a comment */\\n"); }
END { clear(@n); }
"""


def test_structure_reads_like_bpftrace() -> None:
    script = parse(TOOL)
    assert [p.attach for p in script.probes] == [
        ("uprobe:/bin/bash:readline", "uprobe:/usr/lib/*.so:f"),
        ("tracepoint:syscalls:sys_enter_openat",),
        ("BEGIN",),
        ("END",),
    ]
    assert [p.line for p in script.probes] == [5, 15, 17, 18]
    first = script.probes[0]
    assert first.predicate is not None
    opening, closing = first.predicate
    assert TOOL[opening : closing + 1] == '/comm == "ba/sh" && pid / 2 > 0/'
    assert TOOL[first.body[0]] == "{" and TOOL[first.body[1]] == "}"
    assert script.preprocessor == [(1, "#include <linux/sched.h>"), (2, "#define MAX_ARGS 20")]
    assert script.definitions == [(3, "struct data_t")]
    # Comments are not tokens; strings are one token each.
    texts = [t.text for t in first.tokens]
    assert "system" not in texts
    assert '"}{ system(\\"x\\") /"' in texts


def test_tool_passes_policy_and_its_maps_are_named() -> None:
    check_script(TOOL)
    assert map_functions(TOOL) == {
        "@": "count",
        "@lat": "hist",
        "@l": "lhist",
        "@last": "value",
        "@n": "sum",
        "@bytes": "sum",
        "@lo": "min",
        "@hi": "max",
        "@mean": "avg",
        "@st": "stats",
        "@task": "value",
    }
    assert lhist_args(TOOL) == {"@l": (-10, 256, 5)}


def test_key_kinds_say_how_keys_split() -> None:
    assert key_kinds(TOOL) == {
        "@": ["str"],
        "@lat": ["int", "str"],
        "@last": ["int"],
    }
    script = (
        "kprobe:f { @s[kstack] = count(); @u[ustack(3), tid] = count();"
        ' @x[str(arg0), args->y, $v, 5, "lit", pid / 2] = sum(1); @d[comm] += 1;'
        " if (@y[comm]) { } }"
    )
    assert key_kinds(script) == {
        "@s": ["stack"],
        "@u": ["stack", "int"],
        "@x": ["str", "any", "any", "int", "str", "any"],
        "@d": ["str"],
    }


def test_counting_idioms_are_sums_and_every_write_names_a_map() -> None:
    script = (
        "kprobe:f { @[comm]++; @b[pid] += arg0; ++@c; --@d[comm, pid]; @e -= 1; @f--;"
        " @g *= 2; @h[tid] <<= 1; @i >>= 1; @j /= 2; @k %= 3; @l &= 1; @m |= 1; @n ^= 1;"
        " @o = 1; @o++; @p = count(); if (@q[comm] == 1) { } $v = @r; }"
    )
    assert map_functions(script) == {
        "@": "sum",
        "@b": "sum",
        "@c": "sum",
        "@d": "sum",
        "@e": "sum",
        "@f": "sum",
        **{m: "value" for m in ("@g", "@h", "@i", "@j", "@k", "@l", "@m", "@n", "@o")},
        "@p": "count",
    }
    assert key_kinds(script) == {
        "@": ["str"],
        "@b": ["int"],
        "@d": ["str", "int"],
        "@h": ["int"],
    }


def test_a_script_is_read_once_per_prepare_and_lines_are_exact() -> None:
    # map_functions, key_kinds, lhist_args and instrument all read the same text: one parse.
    text = "\n".join(["BEGIN { @a = 1+1+1; }"] * 50 + ["kprobe:f\n{ @b++ }"])
    assert parse(text) is parse(text)
    script = parse(text)
    assert [p.line for p in script.probes][-2:] == [50, 51]
    assert [(t.text, t.line) for t in script.probes[-1].tokens] == [("@b", 52), ("++", 52)]
    assert [script.line_of(text.index("\n") + d) for d in (-1, 0, 1)] == [1, 1, 2]


def test_lhist_without_literal_bounds_is_left_out() -> None:
    script = (
        "#define LO 0\nkprobe:f { @a = lhist(arg0, LO, 100, 10); @b = lhist(arg0, 0, 100, 010); }"
    )
    assert lhist_args(script) == {"@b": (0, 100, 10)}


@pytest.mark.parametrize(
    ("script", "refusal"),
    [
        ('BEGIN { system("id"); }', "line 1: system() is not allowed"),
        ("kprobe:f {\n  signal(9); }", "line 2: signal() is not allowed"),
        ("kprobe:f { override(0); }", "override() is not allowed"),
        ('BEGIN { cat("/etc/shadow"); }', "cat() is not allowed"),
        ('BEGIN { $r = skboutput("/etc/passwd", 0, 1, 0); }', "skboutput() is not allowed"),
        (
            "struct x {\n#define level flags*0+1||1\nint a; };\n"
            "tracepoint:syscalls:sys_enter_getppid { @ = count(); }",
            "line 2: no preprocessor lines inside a type definition",
        ),
        (
            "struct x {\n#include </dev/watchdog>\n};\nBEGIN { }",
            "line 2: no preprocessor lines inside a type definition",
        ),
        ("struct x { int a; # define A 1\n};\nBEGIN { }", "no preprocessor lines inside"),
        ("struct x\n#include </dev/zero>\n{ int a; };\nBEGIN { }", "line 2: no preprocessor"),
        ("struct x /* } */ { int a; };\nBEGIN { }", "no comments or quotes inside"),
        ('BEGIN { system ("id"); }', "system() is not allowed"),
        ('BEGIN { if (1) { $x = 1; system("id") } }', "system() is not allowed"),
        ('kprobe:f /system("id")/ { }', "system() is not allowed"),
        ('#include "/etc/shadow"\nBEGIN { }', "line 1: only system headers"),
        ("#include <../../etc/shadow>\nBEGIN { }", "no absolute path, no '..'"),
        ("#include </etc/shadow>\nBEGIN { }", "no absolute path, no '..'"),
        ("#include <linux/../../../etc/shadow>\nBEGIN { }", "no absolute path, no '..'"),
        ("#define pid 1\nBEGIN { }", "#define UPPER_CASE <integer>"),
        ("#define X system\nBEGIN { }", "#define UPPER_CASE <integer>"),
        ("#if 1\nBEGIN { }", "only #include"),
        ("struct cgroup { int x; };\nBEGIN { }", "struct cgroup may not be redefined"),
        ("struct kernfs_node { long id; }\nBEGIN { }", "struct kernfs_node may not be"),
        ("BEGIN, kprobe:f { }", "BEGIN must be a probe of its own"),
        ("BEGIN /1/ { }", "BEGIN must be a probe of its own"),
        ("", "the script is empty"),
        ("   \n", "the script is empty"),
        ("// only a comment\n", "the script has no probe"),
        ('BEGIN { "unclosed }', "line 1: a string is not closed"),
        ("BEGIN { @x = 1;", "a block is not closed"),
        ("/* open comment\nBEGIN { }", "a comment is not closed"),
        ("kprobe:f /pid == 1 { }", "a predicate is not closed"),
        ("kprobe:f @x = 1;", "expected '{'"),
        ("kprobe:f /pid) || (1/ { @ = count(); }", "unbalanced ')'"),
        ("kprobe:f /pid == 1 || (1/ { @ = count(); }", "a predicate is not closed"),
        ("kprobe:f /(pid == 1]/ { }", "unbalanced ']'"),
        ("kprobe:f { @x = (1; }", "unbalanced '}'"),
        (
            "struct X { int a; /* { */ }\nkprobe:f { @ = count(); } }\nBEGIN { }",
            "line 1: no comments or quotes inside a type definition",
        ),
        ("struct X { char c; // }\n};\nBEGIN { }", "no comments or quotes inside"),
        ('struct X { char c[2]; /* "}" */ };\nBEGIN { }', "no comments or quotes inside"),
        ("kprobe:f { @x = 1); }", "unbalanced ')'"),
        ("BEGIN { }\n" * (MAX_PROBES + 1), f"above {MAX_PROBES}"),
        ("\n" * MAX_LINES + "BEGIN { }", f"above {MAX_LINES}"),
    ],
)
def test_refused_scripts_name_what_and_where(script: str, refusal: str) -> None:
    with pytest.raises(PolicyViolation, match=re.escape(refusal)):
        check_script(script)


@pytest.mark.parametrize(
    "script",
    [
        'BEGIN { printf("system(\\"id\\")\\n"); }',  # in a string
        'BEGIN { // system("id")\n }',  # in a line comment
        'BEGIN { /* cat("/etc/shadow") */ }',
        "kprobe:f { @system = count(); $cat = 1; @x[curtask->signal] = count(); }",
        "tracepoint:signal:signal_generate { @[args->sig] = count(); }",
        "uprobe:/bin/cat:main { @ = count(); }",  # names in attach points are paths
        "kprobe:f { @ = count(); } // trailing comment without newline",
    ],
)
def test_lookalikes_are_allowed(script: str) -> None:
    check_script(script)


def test_instrument_joins_the_scope_on_the_same_lines() -> None:
    out = instrument(TOOL, scope_predicate="pid == 42", interval_s=None, marker="M")
    lines, original = out.split("\n"), TOOL.split("\n")
    # The user's lines keep their numbers: bpftrace's errors point at them.
    assert len(lines) >= len(original)
    assert lines[5] == '/(pid == 42) && (comm == "ba/sh" && pid / 2 > 0)/'
    assert lines[14].startswith("tracepoint:syscalls:sys_enter_openat /pid == 42/ {")
    assert lines[16] == 'BEGIN { printf("M attached\\n"); printf("hello /* not a comment */\\n"); }'
    assert lines[17] == "END { clear(@n); }"  # BEGIN/END/interval run in bpftrace's own context
    for number in (0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 15):
        assert lines[number] == original[number]
    check_script(out)  # and still a script bpftrace's structure reader accepts


def test_instrument_appends_the_interval_print_and_a_begin() -> None:
    script = "tracepoint:a:b { @[comm] = count(); @h = hist(1); }\ninterval:s:1 { @t = count(); }"
    out = instrument(script, scope_predicate="pid == 7", interval_s=0.25, marker="ft-x")
    assert out.split("\n")[:2] == [
        "tracepoint:a:b /pid == 7/ { @[comm] = count(); @h = hist(1); }",
        "interval:s:1 { @t = count(); }",
    ]
    assert 'BEGIN { printf("ft-x attached\\n"); }' in out
    assert (
        'interval:ms:250 { printf("ft-x begin\\n"); print(@); print(@h); print(@t);'
        ' printf("ft-x end\\n"); }'
    ) in out
    assert instrument(script, scope_predicate=None, interval_s=None, marker="m").startswith(script)


@pytest.mark.parametrize(
    "body", ["@[comm] = count();", "@[kstack] = count();", 'printf("%d", pid);', "@ = curtask;"]
)
def test_a_scoped_interval_probe_may_not_look_at_the_interrupted_task(body: str) -> None:
    script = f"interval:ms:10 {{ {body} }}\ntracepoint:a:b {{ @n = count(); }}"
    with pytest.raises(PolicyViolation, match=r"line 1: .* in an interval probe is the task"):
        instrument(script, scope_predicate="pid == 1", interval_s=None, marker="m")
    instrument(script, scope_predicate=None, interval_s=None, marker="m")  # unconfined: as is


def test_a_scoped_interval_probe_may_print_and_clear() -> None:
    script = "tracepoint:a:b { @[comm] = count(); }\ni:s:1 { print(@); clear(@); @x = nsecs; }"
    out = instrument(script, scope_predicate="pid == 1", interval_s=None, marker="m")
    assert out.split("\n")[1] == "i:s:1 { print(@); clear(@); @x = nsecs; }"


def test_a_body_right_after_the_attach_point_gets_a_spaced_predicate() -> None:
    out = instrument(
        "kprobe:f{ @ = count(); }", scope_predicate="pid == 1", interval_s=None, marker="m"
    )
    assert out.startswith("kprobe:f /pid == 1/ { @ = count(); }")


def test_a_predicate_with_a_comment_before_its_end_keeps_working() -> None:
    script = "kprobe:f\n/pid == 1 // the one\n/\n{ @ = count(); }"
    out = instrument(script, scope_predicate='comm == "x"', interval_s=None, marker="m")
    assert out.split("\n")[:4] == [
        "kprobe:f",
        '/(comm == "x") && (pid == 1 // the one',
        ")/",
        "{ @ = count(); }",
    ]


@pytest.mark.parametrize(
    ("comm", "literal"),
    [
        ("bash", '"bash"'),
        ('a"b', '"a\\x22b"'),
        ("a\\b", '"a\\x5cb"'),
        ("x\ny", '"x\\x0ay"'),
        ("é", '"\\xc3\\xa9"'),
    ],
)
def test_comm_is_a_safe_bpftrace_string(comm: str, literal: str) -> None:
    assert bpftrace_string(comm) == literal


def test_scope_predicates() -> None:
    assert scope_predicate(Scope(), None) is None
    assert scope_predicate(Scope(pid=12), None) == "pid == 12"
    assert scope_predicate(Scope(pid=3, comm='ev"il'), None) == 'pid == 3 && comm == "ev\\x22il"'
    with pytest.raises(BadParameter, match=r"scope\.comm"):
        scope_predicate(Scope(comm="éééééééé"), None)


@pytest.mark.root
def test_cgroup_scope_is_the_group_and_below(
    make_cgroup: Callable[[str], Path], tmp_path: Path
) -> None:
    group = make_cgroup("scope")
    (group / "child").mkdir()
    try:
        ino = group.stat().st_ino
        with_btf = scope_predicate(Scope(cgroup=group.name), None)
        assert with_btf is not None
        assert "->level >= 1 && " in with_btf and f"->id == {ino})" in with_btf
        without = scope_predicate(Scope(cgroup=group.name), None, btf=tmp_path / "none")
        child = (group / "child").stat().st_ino
        assert without == f"(cgroup == {ino} || cgroup == {child})"
    finally:
        (group / "child").rmdir()
