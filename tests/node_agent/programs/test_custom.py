"""custom: caller C with declared maps, and how compile and verifier failures are reported."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from node_agent.protocol import (
    MAX_ERROR_DETAIL,
    ErrorCode,
    MapDecl,
    MapKind,
    RunState,
    Scope,
    TraceRequest,
)
from tests.helpers import TraceOutcome, row_value, run_trace

pytestmark = pytest.mark.bcc

N = 3000
COUNTER_C = """
struct key_t {
    u32 tgid;
    char comm[FT_COMM_LEN];
};
BPF_HASH(calls, struct key_t, u64, FT_MAP_ENTRIES);
BPF_HASH(by_tgid, u32, u64, FT_MAP_ENTRIES);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
    if (!ft_in_scope())
        return 0;
    struct key_t key = {};
    key.tgid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    calls.increment(key);
    u32 tgid = key.tgid;
    by_tgid.increment(tgid);
    return 0;
}
"""
COUNTER_MAPS = [
    MapDecl(name="calls", kind=MapKind.counter),
    MapDecl(name="by_tgid", kind=MapKind.counter),
]

HIST_C = """
struct hkey_t {
    u32 tgid; /* bcc pads after it: the padding must not become a label */
    u64 slot;
    char comm[FT_COMM_LEN];
};
BPF_HISTOGRAM(sizes, struct hkey_t);
BPF_HISTOGRAM(flat);

TRACEPOINT_PROBE(syscalls, sys_enter_write)
{
    if (!ft_in_scope())
        return 0;
    struct hkey_t key = {};
    key.tgid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    key.slot = bpf_log2l(args->count);
    sizes.increment(key);
    flat.increment(bpf_log2l(args->count));
    return 0;
}
"""

# Reads through a map value pointer without the NULL check the verifier insists on.
UNCHECKED_C = """
BPF_HASH(seen, u32, u64, FT_MAP_ENTRIES);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
    u32 key = 1;
    u64 *v = seen.lookup(&key);
    *v += 1;
    return 0;
}
"""


def _waiting_python(script: str) -> subprocess.Popen[str]:
    """A python child that runs script once a line arrives on its stdin."""
    code = f"import sys; sys.stdin.readline()\n{script}"
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, text=True)


def _release(proc: subprocess.Popen[str]) -> Callable[[], None]:
    def workload() -> None:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        proc.wait(timeout=30)

    return workload


def _custom(run_id: str, source: str, maps: list[MapDecl], **kw: object) -> TraceRequest:
    return TraceRequest(
        run_id=run_id, program="custom", duration_s=2, source=source, maps=maps, **kw
    )  # type: ignore[arg-type]


def _check_counter_trace(run_id: str) -> None:
    """A good custom trace: exact getppid counts for one pid, under struct and scalar keys."""
    child = _waiting_python(f"import os\nfor _ in range({N}): os.getppid()\n")
    request = _custom(run_id, COUNTER_C, COUNTER_MAPS, scope=Scope(pid=child.pid))
    outcome = run_trace(request, _release(child), allow_custom=True)
    assert outcome.final.state is RunState.succeeded, outcome.final
    calls = outcome.table("calls")
    assert [(f.name, f.type) for f in calls.key_fields] == [("tgid", "int"), ("comm", "str")]
    assert row_value(calls, tgid=child.pid) == N
    assert {keys[0] for keys, _ in calls.rows} == {child.pid}
    assert row_value(calls, comm="python3") + row_value(calls, comm="python") == N
    by_tgid = outcome.table("by_tgid")
    assert [f.name for f in by_tgid.key_fields] == ["key"]
    assert by_tgid.rows == [([child.pid], [N])]


def _failed(outcome: TraceOutcome, code: ErrorCode) -> str:
    assert outcome.final.state is RunState.failed, outcome.final
    error = outcome.final.error
    assert error is not None and error.code is code, error
    assert error.detail is not None
    return error.detail


def test_counter_maps_with_struct_and_scalar_keys_count_exactly() -> None:
    _check_counter_trace("custom-counter")


def test_log2_histograms_with_struct_and_scalar_keys() -> None:
    # 40 writes of 1000 bytes (slot 10: 512..1023) and 25 of 10 bytes (slot 4: 8..15).
    child = _waiting_python(
        "import os\nfd = os.open('/dev/null', os.O_WRONLY)\n"
        "for _ in range(40): os.write(fd, b'x' * 1000)\n"
        "for _ in range(25): os.write(fd, b'y' * 10)\n"
    )
    maps = [
        MapDecl(name="sizes", kind=MapKind.log2_hist, unit="bytes"),
        MapDecl(name="flat", kind=MapKind.log2_hist, unit="bytes"),
    ]
    request = _custom("custom-hist", HIST_C, maps, scope=Scope(pid=child.pid))
    outcome = run_trace(request, _release(child), allow_custom=True)
    assert outcome.final.state is RunState.succeeded, outcome.final
    hists = {(h.name, tuple(h.labels.items())): h for h in outcome.histograms()}
    labelled = [h for (name, _), h in hists.items() if name == "sizes"]
    assert len(labelled) == 1
    assert set(labelled[0].labels) == {"tgid", "comm"}
    assert labelled[0].labels["tgid"] == child.pid
    assert str(labelled[0].labels["comm"]).startswith("python")
    assert labelled[0].unit == "bytes"
    assert labelled[0].buckets == [(4, 25), (10, 40)]
    assert hists[("flat", ())].buckets == [(4, 25), (10, 40)]


def test_c_that_does_not_compile_fails_with_the_clang_message() -> None:
    source = COUNTER_C.replace("calls.increment(key);", "calls.increment(key); no_such_thing++;")
    outcome = run_trace(_custom("custom-cc", source, COUNTER_MAPS), allow_custom=True)
    detail = _failed(outcome, ErrorCode.compile_error)
    assert "no_such_thing" in detail and "error" in detail, detail
    _check_counter_trace("custom-cc-after")


def test_a_long_compile_log_is_truncated_to_the_protocol_limit() -> None:
    name = "undeclared_" + "x" * 400
    body = "\n".join(f"    {name}{i} = {i};" for i in range(40))
    source = f"TRACEPOINT_PROBE(syscalls, sys_enter_getppid)\n{{\n{body}\n    return 0;\n}}\n"
    outcome = run_trace(_custom("custom-long", source, COUNTER_MAPS), allow_custom=True)
    detail = _failed(outcome, ErrorCode.compile_error)
    assert len(detail) <= MAX_ERROR_DETAIL
    assert "bytes cut]" in detail
    assert name in detail  # the head and the tail of the log are both kept


def test_c_the_verifier_rejects_fails_with_the_verifier_log() -> None:
    maps = [MapDecl(name="seen", kind=MapKind.counter)]
    outcome = run_trace(_custom("custom-verifier", UNCHECKED_C, maps), allow_custom=True)
    detail = _failed(outcome, ErrorCode.verifier_rejected)
    assert "map_value_or_null" in detail, detail
    _check_counter_trace("custom-verifier-after")


def test_a_declared_map_the_program_lacks_is_a_bad_request() -> None:
    maps = [*COUNTER_MAPS, MapDecl(name="not_there", kind=MapKind.counter)]
    outcome = run_trace(_custom("custom-nomap", COUNTER_C, maps), allow_custom=True)
    assert outcome.final.state is RunState.failed, outcome.final
    error = outcome.final.error
    assert error is not None and error.code is ErrorCode.bad_request
    assert "not_there" in error.message
    # Found when the program is loaded, not after the whole trace has run.
    assert not [e for e in outcome.events if getattr(e, "state", None) is RunState.running]
    _check_counter_trace("custom-nomap-after")


def test_custom_is_unsupported_unless_allowed() -> None:
    outcome = run_trace(_custom("custom-off", COUNTER_C, COUNTER_MAPS))
    assert outcome.final.state is RunState.unsupported, outcome.final
    assert outcome.final.error is not None
    assert outcome.final.error.code is ErrorCode.unsupported
    _check_counter_trace("custom-off-after")
