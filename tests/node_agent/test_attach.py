"""Choosing a program's attach option from a host's features, tracepoints and kernel
functions (no bcc: the features are given, tracefs is a directory made here)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from node_agent.attach import choose, kernel_functions
from node_agent.capabilities import program_support
from node_agent.errors import BadParameter, UnsupportedProgram
from node_agent.programs import get_program
from node_agent.protocol import Feature, RunState, Snapshot, StateChange, TraceRequest
from node_agent.runtime.fake import FakeProgram, FakeRuntime
from node_agent.trace import execute, prepare

ALL = frozenset(Feature)
TCP_FUNCTIONS = ["tcp_v4_connect", "tcp_v6_connect", "tcp_rcv_state_process"]


def _tracefs(root: Path, tracepoints: list[str], functions: list[str]) -> Path:
    """A tracefs with these tracepoints and attachable functions (a name per test: the
    kernel's function list is cached per tracefs path)."""
    root.mkdir()
    for tp in tracepoints:
        (root / "events" / tp.replace(":", "/")).mkdir(parents=True)
    (root / "available_filter_functions").write_text(
        "".join(f"{fn}\n" for fn in functions) + "some_module_fn [some_module]\n"
    )
    return root


def _features(*present: Feature) -> dict[Feature, bool]:
    return {f: f in present for f in Feature}


# name: (features present, tracepoints, kernel functions, attach param, chosen kind or the
# words the refusal must hold)
CASES: dict[str, tuple[frozenset[Feature], list[str], list[str], str, str]] = {
    "the tracepoint first": (
        ALL,
        ["sock:inet_sock_set_state"],
        TCP_FUNCTIONS,
        "auto",
        "tracepoint",
    ),
    "no tracepoint: fentry": (ALL, [], TCP_FUNCTIONS, "auto", "fentry"),
    "fentry refused: kprobes": (
        ALL - {Feature.fentry},
        [],
        TCP_FUNCTIONS,
        "auto",
        "kprobe",
    ),
    "forced past a cheaper one": (
        ALL,
        ["sock:inet_sock_set_state"],
        TCP_FUNCTIONS,
        "kprobe",
        "kprobe",
    ),
    "forced, lacking its feature": (
        ALL - {Feature.kprobes},
        ["sock:inet_sock_set_state"],
        TCP_FUNCTIONS,
        "kprobe",
        "attach=kprobe fails on this host: kprobe (kprobe:tcp_v4_connect,tcp_v6_connect,"
        "tcp_rcv_state_process) needs kprobes",
    ),
    "a renamed function": (
        ALL,
        [],
        ["tcp_v4_connect", "tcp_v6_connect", "tcp_rcv_state_process.isra.0"],
        "auto",
        "needs kernel function tcp_rcv_state_process (renamed or inlined in this kernel)",
    ),
    "nothing at all": (
        frozenset(),
        [],
        [],
        "auto",
        "none of its attach options works on this host: tracepoint"
        " (tracepoint:sock:inet_sock_set_state) needs tracepoints, tracepoint"
        " sock:inet_sock_set_state; fentry",
    ),
}


@pytest.mark.parametrize(
    ("present", "tracepoints", "functions", "wanted", "expect"),
    list(CASES.values()),
    ids=list(CASES),
)
def test_tcpconnlat_picks_the_cheapest_option_it_has(
    tmp_path: Path,
    present: frozenset[Feature],
    tracepoints: list[str],
    functions: list[str],
    wanted: str,
    expect: str,
) -> None:
    tracefs = _tracefs(tmp_path / "tracefs", tracepoints, functions)
    spec = get_program("tcpconnlat")
    features = _features(*present)
    if " " not in expect:
        assert choose(spec, wanted, features, tracefs=tracefs).kind == expect
        return
    with pytest.raises(UnsupportedProgram) as refused:
        choose(spec, wanted, features, tracefs=tracefs)
    assert expect in refused.value.message, refused.value.message


def test_the_kernel_function_list_falls_back_to_kallsyms(tmp_path: Path) -> None:
    """An unreadable available_filter_functions (EPERM in some sandboxes): kallsyms decides."""
    functions = kernel_functions(tmp_path / "no-such-tracefs")
    assert functions is not None and "vfs_read" in functions


def test_program_support_names_each_options_missing_feature() -> None:
    support = program_support(get_program("vfs_latency"), _features(Feature.tracepoints))
    assert not support.supported and support.reason is not None
    assert "fentry (fentry:vfs_read,vfs_write) needs btf, fentry" in support.reason
    assert "kprobe (kprobe:vfs_read,vfs_write) needs kprobes" in support.reason
    kprobes_only = program_support(get_program("vfs_latency"), _features(Feature.kprobes))
    assert kprobes_only.supported
    # Each option's state, for the controller to judge a forced one at dispatch.
    assert kprobes_only.attach == {"fentry": "needs btf, fentry", "kprobe": None}


@pytest.mark.parametrize(
    ("program", "attach"),
    [("offcputime", "kprobe"), ("vfs_latency", "tracepoint"), ("syscalls", "tracepoint")],
)
def test_an_attach_option_a_program_lacks_is_a_bad_parameter(program: str, attach: str) -> None:
    with pytest.raises(BadParameter) as bad:
        get_program(program).validate_params({"attach": attach})
    assert bad.value.field == "params.attach"


def test_the_catalog_describes_each_option() -> None:
    described = get_program("tcpconnlat").describe()
    assert [o["kind"] for o in described["attach"]] == ["tracepoint", "fentry", "kprobe"]
    assert described["attach"][2]["functions"] == TCP_FUNCTIONS
    attach = next(p for p in described["params"] if p["name"] == "attach")
    assert attach["default"] == "auto"
    assert attach["choices"] == ["auto", "tracepoint", "fentry", "kprobe"]


def _run(params: dict[str, str], features: dict[Feature, bool]) -> tuple[FakeRuntime, list[Any]]:
    request = TraceRequest(run_id="attach-u", program="tcpconnlat", duration_s=0.05, params=params)
    runtime = FakeRuntime(FakeProgram({}))
    events: list[Any] = []
    execute(prepare(request), runtime, events.append, threading.Event(), features=features)
    return runtime, events


def test_the_probe_features_pick_the_option_compiled_in_and_shown_in_the_stats() -> None:
    """The agent's probe says tracepoints are out: fentry is compiled in (its define), and
    every snapshot names it."""
    runtime, events = _run({}, _features(Feature.fentry, Feature.btf, Feature.kprobes))
    ((_, cflags),) = runtime.loaded
    assert "-DFT_ATTACH_FENTRY=1" in cflags
    assert not any(f.startswith(("-DFT_ATTACH_TRACEPOINT", "-DFT_ATTACH_KPROBE")) for f in cflags)
    snapshots = [e for e in events if isinstance(e, Snapshot)]
    assert snapshots and all(
        s.stats.attach == "fentry:tcp_v4_connect,tcp_v6_connect,tcp_rcv_state_process"
        for s in snapshots
    )


def test_a_forced_option_the_probe_lacks_is_unsupported_before_compiling() -> None:
    runtime, events = _run({"attach": "kprobe"}, _features(*ALL - {Feature.kprobes}))
    assert runtime.loaded == []
    final = events[-1]
    assert isinstance(final, StateChange) and final.state is RunState.unsupported
    assert final.error is not None and "attach=kprobe fails" in final.error.message


def test_an_option_reading_kernel_structs_tells_the_runtime_what_it_reads() -> None:
    """The struct members an option's C reads go to the runtime, which places them from BTF
    when the headers are approximate (tests/node_agent/test_btf.py); the tracepoint reads
    none (its record has them)."""
    runtime, _ = _run({"attach": "kprobe"}, _features(*ALL))
    assert runtime.kernel_fields == [dict(get_program("tcpconnlat").attach[2].fields)]
    assert runtime.kernel_fields[0]["FT_OFF_SK_DPORT"] == "sock.__sk_common.skc_dport"
    runtime, _ = _run({}, _features(*ALL))
    assert runtime.kernel_fields == [{}]


def test_approximate_headers_without_btf_make_only_the_struct_reading_options_unsupported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from node_agent import btf
    from node_agent.headers.probe import Headers
    from node_agent.protocol import HeadersState

    monkeypatch.setattr(btf, "BTF_VMLINUX", tmp_path / "no-btf")
    headers = Headers(HeadersState.approximate, "6.1's tree; exact ones: apt-get install X", "6.12")
    support = program_support(get_program("tcpconnlat"), _features(*ALL), headers=headers)
    assert support.supported  # the tracepoint reads no struct
    assert support.attach is not None and support.attach["tracepoint"] is None
    assert "reads sock.__sk_common.skc_state" in str(support.attach["kprobe"])
    assert str(tmp_path / "no-btf") in str(support.attach["kprobe"])
    vfs = program_support(get_program("vfs_latency"), _features(*ALL), headers=headers)
    assert not vfs.supported and vfs.reason is not None
    assert "reads file.f_inode" in vfs.reason and "apt-get install X" in vfs.reason
    exact = Headers(HeadersState.exact, "this kernel's", "6.12")
    assert program_support(get_program("vfs_latency"), _features(*ALL), headers=exact).supported
