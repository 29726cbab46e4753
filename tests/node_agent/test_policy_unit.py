"""The agent's own policy as logic: source directives, helper calls in bytecode, output filter."""

from __future__ import annotations

import re
import struct

import pytest

from node_agent.errors import PolicyViolation
from node_agent.programs.custom.source_policy import check_header, check_source
from node_agent.runtime.compiler_output import filter_diagnostics
from node_agent.runtime.helper_ids import HELPER_NAMES
from node_agent.runtime.helpers import ALLOWED_HELPERS, calls, check_functions
from scripts.gen_helper_ids import helper_ids

GOOD_SOURCES: list[tuple[str, str]] = [
    ("kernel headers", "#include <linux/sched.h>\n#include <uapi/linux/ptrace.h>\nint x;"),
    ("net and bcc headers", "#include <net/sock.h>\n#include <bcc/proto.h>\n"),
    ("asm headers", "#include <asm/types.h>\n#include <asm-generic/int-ll64.h>\n"),
    ("spaces around the hash", "  #  include   <linux/fs.h>  \n"),
    ("conditionals and macros", "#define A 1\n#if A\n#undef A\n#elif 0\n#else\n#endif\n"),
    ("loop pragmas", "#pragma unroll\n#pragma clang loop unroll(full)\n#pragma GCC unroll 4\n"),
    ("an include in a comment", '/* #include "/etc/shadow" */\n// #include "/etc/shadow"\n'),
    ("an include in a string", 'char *s = "#include \\"/etc/shadow\\"";\n'),
    ("a null directive", "#\nint x;\n"),
]

BAD_SOURCES: list[tuple[str, str, str]] = [
    ("quoted absolute include", '#include "/etc/shadow"\n', "#include"),
    ("angle absolute include", "#include </etc/shadow>\n", "#include"),
    ("quoted relative climb", '#include "../../../etc/passwd"\n', "#include"),
    ("climb out of a kernel dir", "#include <linux/../../../../etc/shadow>\n", "#include"),
    ("dot component", "#include <linux/./sched.h>\n", "#include"),
    ("double slash", "#include <linux//sched.h>\n", "#include"),
    ("not a header root", "#include <stdio.h>\n", "#include"),
    ("not a .h file", "#include <linux/shadow>\n", "#include"),
    ("computed include", '#define F "/etc/shadow"\n#include F\n', "include F"),
    ("include_next", "#include_next <linux/sched.h>\n", "#include_next"),
    ("import", "#import <linux/sched.h>\n", "#import"),
    ("embed", '#embed "/etc/shadow"\n', "#embed"),
    ("line directive", '#line 1 "/etc/shadow"\n', "#line"),
    ("line marker", '# 1 "/etc/shadow"\n', "line markers"),
    ("digraph hash", '%:include "/etc/shadow"\n', "%:include"),
    ("spliced directive", '#inc\\\nlude "/etc/shadow"\n', "#include"),
    ("spliced with blanks", '#include \\  \n"/etc/shadow"\n', "#include"),
    ("comments around the hash", '/**/#/**/include "/etc/shadow"\n', "include"),
    ("directive after a block comment", '/* a\nb */ #include "/etc/shadow"\n', "#include"),
    ("_Pragma operator", '_Pragma("GCC dependency \\"/etc/shadow\\"")\n', "_Pragma"),
    ("dependency pragma", '#pragma GCC dependency "/etc/shadow"\n', "#pragma"),
    ("debug pragma", "#pragma clang __debug dump x\n", "#pragma"),
    ("has_include", '#if __has_include("/etc/shadow")\n#endif\n', "__has_include"),
    ("trigraph hash", '??=include "/etc/shadow"\n', "trigraphs"),
    ("inline asm", 'asm(".byte 0");\n', "asm"),
    ("__asm__", '__asm__ volatile("");\n', "__asm__"),
    ("incbin", '#define S ".incbin \\"/etc/shadow\\""\n', ".incbin"),
    ("NUL byte", "int x;\x00\n", "control characters"),
    ("escape character", "int x;\x1b[2J\n", "control characters"),
]


@pytest.mark.parametrize("source", [c[1] for c in GOOD_SOURCES], ids=[c[0] for c in GOOD_SOURCES])
def test_kernel_and_bcc_headers_and_plain_directives_pass(source: str) -> None:
    check_source(source)


@pytest.mark.parametrize(
    ("source", "named"), [c[1:] for c in BAD_SOURCES], ids=[c[0] for c in BAD_SOURCES]
)
def test_reaching_outside_the_headers_is_refused_naming_the_line(source: str, named: str) -> None:
    with pytest.raises(PolicyViolation) as info:
        check_source("int before;\n" + source)
    assert info.value.to_error().code.value == "policy"
    assert re.match(r"source line [23]: ", info.value.message), info.value.message
    assert named in info.value.message, info.value.message


def test_header_rule() -> None:
    assert check_header("linux/sched.h") is None
    assert check_header("asm-generic/int-ll64.h") is None
    for bad in ("linux", "linux/", "/linux/x.h", "linux/../x.h", "etc/shadow.h", "linux/x.c"):
        assert check_header(bad) is not None, bad


def _insn(opcode: int, src: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", opcode, src << 4, 0, imm)


HELPER_ID = {name: i for i, name in HELPER_NAMES.items()}


def test_calls_are_read_from_bytecode_skipping_wide_loads() -> None:
    # A 16-byte ld_imm64 whose second half happens to look like a call must not count.
    code = (
        _insn(0x18, imm=1)
        + _insn(0x85, imm=HELPER_ID["send_signal"])
        + _insn(0x85, imm=HELPER_ID["ktime_get_ns"])
        + _insn(0x85, src=1, imm=4)
        + _insn(0x95)
    )
    found = calls("f", code)
    assert [(c.kind, c.target) for c in found] == [(0, HELPER_ID["ktime_get_ns"]), (1, 4)]
    assert check_functions([("f", code)]) == 2


@pytest.mark.parametrize(
    ("src", "imm", "named"),
    [
        (0, HELPER_ID["probe_write_user"], "helper bpf_probe_write_user"),
        (0, HELPER_ID["override_return"], "helper bpf_override_return"),
        (0, HELPER_ID["send_signal"], "helper bpf_send_signal"),
        (0, HELPER_ID["send_signal_thread"], "helper bpf_send_signal_thread"),
        (0, HELPER_ID["skb_store_bytes"], "helper bpf_skb_store_bytes"),
        (0, HELPER_ID["sys_bpf"], "helper bpf_sys_bpf"),
        (0, HELPER_ID["trace_printk"], "helper bpf_trace_printk"),
        (0, HELPER_ID["tail_call"], "helper bpf_tail_call"),
        (0, 100_000, "helper bpf_#100000"),
        (2, 1234, "kfunc call (BTF id 1234)"),
        (3, 1, "call of kind 3"),
    ],
    ids=lambda v: str(v),
)
def test_a_call_off_the_allowlist_is_refused_naming_it(src: int, imm: int, named: str) -> None:
    good = _insn(0x85, imm=HELPER_ID["map_lookup_elem"])
    with pytest.raises(PolicyViolation) as info:
        check_functions([("ok", good), ("bad_fn", good + _insn(0x85, src=src, imm=imm))])
    assert info.value.message.startswith(f"{named} is not allowed (called in bad_fn)")


def test_every_allowed_helper_is_a_known_helper() -> None:
    assert not ALLOWED_HELPERS - set(HELPER_NAMES.values())


def test_helper_ids_parse_the_old_and_the_new_mapper() -> None:
    old = "#define __BPF_FUNC_MAPPER(FN)\t\\\n\tFN(unspec),\t\\\n\tFN(map_lookup_elem),\t\\\n\n"
    new = (
        "#define ___BPF_FUNC_MAPPER(FN, ctx...)\t\\\n\tFN(unspec, 0, ##ctx)\t\\\n"
        "\tFN(cgrp_storage_get, 210, ##ctx)\t\\\n\n"
    )
    assert helper_ids(old) == {0: "unspec", 1: "map_lookup_elem"}
    assert helper_ids(new) == {0: "unspec", 210: "cgrp_storage_get"}


def test_diagnostics_in_other_files_are_withheld_whole() -> None:
    output = "\n".join(
        [
            "In file included from /virtual/main.c:1:",
            "/etc/shadow:1:5: error: expected ';' after top level declarator",
            "root:*:20228:0:99999:7:::",
            "    ^",
            "/virtual/main.c:3:9: error: use of undeclared identifier 'y'",
            "int x = y;",
            "        ^",
            "/lib/modules/6.1/build/include/linux/sched.h:4:1: warning: something",
            "struct task_struct;",
            "1 warning and 2 errors generated.",
        ]
    )
    kept = filter_diagnostics(output)
    assert "root:" not in kept and "/etc/shadow" not in kept
    assert "int x = y;" in kept and "struct task_struct;" in kept
    assert "In file included from /virtual/main.c:1:" in kept
    assert "1 diagnostic(s) located in files other than" in kept


def test_an_lsm_program_is_refused_whatever_it_calls() -> None:
    with pytest.raises(PolicyViolation, match="lsm__file_open: an LSM program"):
        check_functions([("lsm__file_open", _insn(0x95))])
