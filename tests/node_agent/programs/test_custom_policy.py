"""custom under the agent's policy, with real bcc: state-changing helpers and files outside the
kernel and bcc headers are refused before anything loads, and a good program still counts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from node_agent.errors import PolicyViolation
from node_agent.protocol import ErrorCode, MapDecl, MapKind, RunState, TraceError
from node_agent.runtime.bcc_runtime import BccRuntime
from node_agent.trace import PRELUDE
from tests.helpers import TraceOutcome, run_trace
from tests.node_agent.programs.test_custom import _check_counter_trace, _custom

pytestmark = pytest.mark.bcc

MAPS = [MapDecl(name="seen", kind=MapKind.counter)]


def _probe(statement: str) -> str:
    return (
        "BPF_HASH(seen, u32, u64, FT_MAP_ENTRIES);\n"
        "TRACEPOINT_PROBE(syscalls, sys_enter_getppid)\n{\n"
        "    u64 value = 1;\n    u32 key = 0;\n"
        f"    {statement};\n"
        "    seen.increment(key);\n    return 0;\n}\n"
    )


HOSTILE_HELPERS: list[tuple[str, str]] = [
    ("probe_write_user", "bpf_probe_write_user((void *)args->__syscall_nr, &value, 8)"),
    ("override_return", "bpf_override_return((struct pt_regs *)args, 0)"),
    ("send_signal", "bpf_send_signal(9)"),
    ("send_signal_thread", "bpf_send_signal_thread(9)"),
    ("trace_printk", 'bpf_trace_printk("hello\\n")'),
]

SHADOW = Path("/etc/shadow")
HOSTILE_INCLUDES: list[tuple[str, str]] = [
    ("quoted absolute", '#include "/etc/shadow"'),
    ("angle absolute", "#include </etc/shadow>"),
    ("quoted climb", '#include "../../../etc/passwd"'),
    ("angle climb from a kernel dir", "#include <linux/../../../../../../etc/shadow>"),
    ("computed", '#define F "/etc/shadow"\n#include F'),
    ("line directive", '#line 1 "/etc/shadow"\nint x = y;'),
]


@pytest.fixture
def kernel_loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Names of the functions bcc hands to the kernel (bcc_func_load: BPF_PROG_LOAD)."""
    from bcc import lib

    loads: list[bytes] = []
    real = lib.bcc_func_load

    def spy(module: Any, prog_type: int, name: bytes, *rest: Any) -> Any:
        loads.append(name)
        return real(module, prog_type, name, *rest)

    monkeypatch.setattr(lib, "bcc_func_load", spy)
    yield loads


def _bpf_prog_fds() -> int:
    fds = Path("/proc/self/fd")
    links = []
    for fd in fds.iterdir():
        try:
            links.append(os.readlink(fd))
        except OSError:
            continue
    return sum(link == "anon_inode:bpf-prog" for link in links)


def _shadow_lines() -> list[str]:
    lines = [line for line in SHADOW.read_text().splitlines() if line.strip()]
    assert lines, "the test needs a non-empty /etc/shadow"
    return lines


def _assert_no_shadow_line(error: TraceError | None) -> None:
    assert error is not None
    text = f"{error.message}\n{error.detail or ''}"
    for line in _shadow_lines():
        assert line not in text, "a line of /etc/shadow reached the error"


def _refused(outcome: TraceOutcome) -> TraceError:
    assert outcome.final.state is RunState.failed, outcome.final
    error = outcome.final.error
    assert error is not None and error.code is ErrorCode.policy, error
    assert not [e for e in outcome.events if getattr(e, "state", None) is RunState.running]
    assert not outcome.snapshots
    return error


@pytest.mark.parametrize(
    ("helper", "statement"), HOSTILE_HELPERS, ids=[h[0] for h in HOSTILE_HELPERS]
)
def test_a_state_changing_helper_is_refused_naming_it(helper: str, statement: str) -> None:
    outcome = run_trace(_custom(f"helper-{helper}", _probe(statement), MAPS), allow_custom=True)
    error = _refused(outcome)
    assert error.message.startswith(f"helper bpf_{helper} is not allowed"), error.message
    _check_counter_trace(f"helper-{helper}-after")


@pytest.mark.parametrize(
    ("helper", "statement"), HOSTILE_HELPERS, ids=[h[0] for h in HOSTILE_HELPERS]
)
def test_a_refused_program_never_reaches_the_kernel(
    kernel_loads: list[bytes], helper: str, statement: str
) -> None:
    source = PRELUDE.read_text() + "\n" + _probe(statement)
    before = _bpf_prog_fds()
    with pytest.raises(PolicyViolation, match=f"helper bpf_{helper} is not allowed"):
        BccRuntime().load(source, ["-DFT_MAP_ENTRIES=16"])
    assert kernel_loads == []
    assert _bpf_prog_fds() == before
    # The same spy sees a good program load: the check above is not vacuous.
    program, _, _ = BccRuntime().load(source.replace(statement, "value++"), [])
    try:
        assert kernel_loads == [b"tracepoint__syscalls__sys_enter_getppid"]
        assert _bpf_prog_fds() == before + 1
    finally:
        program.close()


# Past the source check: `asm` and `.incbin` spelled by pasting and string concatenation.
PASTED_INCBIN = """
#define CAT(a, b) a##b
BPF_HASH(seen, u32, u64, FT_MAP_ENTRIES);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
    CAT(__as, m__) volatile(".inc" "bin \\"/etc/shadow\\"");
    return 0;
}
"""


def test_a_file_read_smuggled_past_the_source_check_cannot_be_read() -> None:
    # LLVM exits the process on the failed .incbin; its words went to the compile's own
    # output, which dies with it, so the run fails without a line of the file anywhere.
    outcome = run_trace(_custom("incbin", PASTED_INCBIN, MAPS), allow_custom=True)
    assert outcome.final.state is RunState.failed, outcome.final
    assert not outcome.snapshots
    _assert_no_shadow_line(outcome.final.error)
    _check_counter_trace("incbin-after")


LANDLOCKED = r"""
import sys
from node_agent.runtime.sandbox import read_only_beneath, readable_roots
read_only_beneath(readable_roots())
for path in sys.argv[1:]:
    try:
        open(path, "rb").close()
        print(path, "read")
    except PermissionError:
        print(path, "denied")
"""


def test_the_custom_sandbox_reads_system_trees_only() -> None:
    paths = ["/etc/shadow", "/etc/passwd", "/proc/1/root/etc/shadow", "/usr/include/linux/bpf.h"]
    paths += [str(PRELUDE), "/proc/self/status", "/sys/kernel/tracing/available_events"]
    done = subprocess.run(
        [sys.executable, "-c", LANDLOCKED, *paths], capture_output=True, text=True, check=True
    )
    seen = dict(line.rsplit(" ", 1) for line in done.stdout.splitlines())
    assert seen == {p: "denied" if "/etc/" in p else "read" for p in paths}, seen


@pytest.mark.parametrize(
    "include", [i[1] for i in HOSTILE_INCLUDES], ids=[i[0] for i in HOSTILE_INCLUDES]
)
def test_an_include_outside_the_headers_is_refused_without_quoting_the_file(
    include: str,
) -> None:
    source = include + "\n" + _probe("value++")
    outcome = run_trace(_custom("include", source, MAPS), allow_custom=True)
    error = _refused(outcome)
    assert "is not allowed" in error.message, error.message
    _assert_no_shadow_line(error)
    _check_counter_trace("include-after")


# Loads straight through the runtime, as if the source check had missed the include, in a
# child process like the agent's. (No map in it: bcc 0.26 crashes on a map after this error.)
PAST_THE_CHECK = r"""
import sys
from node_agent.errors import ProgramCompileError
from node_agent.runtime.bcc_runtime import BccRuntime
from node_agent.trace import PRELUDE
source = PRELUDE.read_text() + '\n#include "/etc/shadow"\n' + sys.stdin.read()
try:
    BccRuntime().load(source, [])
except ProgramCompileError as exc:
    sys.stdout.write(exc.to_error().model_dump_json())
"""


def test_compiler_output_about_other_files_is_withheld_even_past_the_source_check() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PAST_THE_CHECK],
        input="TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return 0; }\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    error = TraceError.model_validate_json(done.stdout)
    assert error.code is ErrorCode.compile_error, error
    _assert_no_shadow_line(error)
    assert "withheld" in (error.detail or ""), error.detail
    for line in _shadow_lines():  # nor on the child's own stderr, which the agent may log
        assert line not in done.stderr


def test_catalog_programs_pass_the_helper_check(
    kernel_loads: list[bytes], make_cgroup: Callable[[str], Path]
) -> None:
    from node_agent.attach import unavailable
    from node_agent.programs import catalog
    from node_agent.programs.spec import AUTO
    from node_agent.protocol import Scope, TraceRequest
    from node_agent.trace import prepare

    group = make_cgroup("helpers")
    bcc_programs = {name for name, spec in catalog().items() if spec.engine == "bcc"}
    for name in sorted(bcc_programs - {"custom"}):
        # Every scope at once, so the prelude's scope helpers are in the bytecode too.
        scope = Scope() if name == "tcp_retransmits" else Scope(pid=1, comm="x", cgroup=group.name)
        request = TraceRequest(run_id=f"cat-{name}", program=name, duration_s=1, scope=scope)
        prepared = prepare(request)
        cflags = prepared.cflags
        spec = catalog()[name]
        if spec.attach:  # with the option the agent would pick here (none: nothing to load)
            option, _ = unavailable(spec, AUTO, None)
            if option is None:
                continue
            cflags = [*cflags, f"-D{option.define}=1"]
        program, _, _ = BccRuntime().load(prepared.source, cflags)
        program.close()
    assert kernel_loads


@pytest.fixture
def victim() -> Iterator[Path]:
    """Another tool's map pinned in bpffs, holding key 1 = 42."""
    path = Path(f"/sys/fs/bpf/fleettrace-test-{os.getpid()}-victim")
    create = "map create {} type hash key 4 value 8 entries 4 name victim"
    update = "map update pinned {} key 1 0 0 0 value 42 0 0 0 0 0 0 0"
    for command in (create, update):
        subprocess.run(["bpftool", *command.format(path).split()], check=True)
    yield path
    path.unlink()


def _pinned_probe(path: Path) -> str:
    return (
        f'BPF_TABLE("hash:{path}", u32, u64, seen, 4);\n'
        "TRACEPOINT_PROBE(syscalls, sys_enter_getppid)\n{\n"
        "    u32 key = 1;\n    u64 value = 7;\n"
        "    seen.update(&key, &value);\n    return 0;\n}\n"
    )


def test_a_pinned_map_can_be_neither_opened_nor_created(victim: Path) -> None:
    fresh = victim.with_name(victim.name + "-new")
    for path in (victim, fresh):
        outcome = run_trace(_custom("pinned", _pinned_probe(path), MAPS), allow_custom=True)
        error = _refused(outcome)
        assert error.message.startswith("pinned maps are not allowed"), error.message
        os.getppid()
    dump = subprocess.run(
        ["bpftool", "-j", "map", "dump", "pinned", str(victim)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert '"value":["0x2a"' in dump.replace(" ", ""), dump  # still 42, never 7
    assert not fresh.exists()
    _check_counter_trace("pinned-after")


def test_an_lsm_program_is_refused_before_it_can_decide_anything() -> None:
    source = "BPF_HASH(seen, u32, u64, 4);\nLSM_PROBE(file_open, struct file *file) { return -1; }"
    outcome = run_trace(_custom("lsm", source, MAPS), allow_custom=True)
    error = _refused(outcome)
    assert error.message.startswith("lsm__file_open: an LSM program"), error.message
