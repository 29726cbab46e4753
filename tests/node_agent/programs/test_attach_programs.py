"""tcpconnlat, offcputime and vfs_latency on this kernel (6.18: tracepoints, no kprobes, fentry
refused), each against a workload whose answer is known; the options this kernel lacks are
`unsupported` with reasons naming them. tests/kernel_matrix forces the others (a row per
option) in 6.1 and 6.12 guests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from node_agent import btf
from node_agent.attach import TRACEFS, fentry_problem
from node_agent.programs import catalog
from node_agent.protocol import Limits, Scope, TraceRequest
from node_agent.trace import prepare
from tests.helpers import run_trace
from tests.node_agent.programs import known_workloads as known

pytestmark = pytest.mark.bcc

PORT = 47101


def _no_kprobes_nor_fentry() -> None:
    if (TRACEFS / "kprobe_events").exists() or fentry_problem() is None:
        pytest.skip("this kernel has kprobes or fentry: the VM test covers that case")


def test_tcpconnlat_times_each_destination_by_the_tracepoint(netns: str) -> None:
    with known.started(known.connects_argv(netns, PORT, 5)) as workload:
        done: dict[str, object] = {}
        request = TraceRequest(
            run_id="tcpconnlat-tp",
            program="tcpconnlat",
            duration_s=4,
            scope=Scope(pid=workload.pid),
        )
        outcome = run_trace(request, lambda: done.update(workload.go()))
        workload.end()
    assert outcome.final.state.value == "succeeded", outcome.final
    assert done.get("error") == 0, done
    snapshot = outcome.last
    assert snapshot.stats.attach == "tracepoint:sock:inet_sock_set_state"
    assert known.check_connects(snapshot, workload.pid, workload.comm, PORT, 5) == []


def test_tcpconnlat_bounds_a_flood_of_destinations_and_counts_the_drops(netns: str) -> None:
    """40 destinations (127.0.0.1-40) in maps of 16 entries: at most 16 rows, the rest
    counted as drops (unscoped: other connects on this machine may take entries too)."""
    flood = f"""
import socket
server = socket.socket()
server.bind(("0.0.0.0", {PORT + 5}))
server.listen(128)
for i in range(1, 41):
    client = socket.create_connection((f"127.0.0.{{i}}", {PORT + 5}))
    server.accept()[0].close()
    client.close()
"""
    request = TraceRequest(
        run_id="tcpconnlat-flood",
        program="tcpconnlat",
        duration_s=4,
        limits=Limits(map_entries=16),
    )
    argv = ["ip", "netns", "exec", netns, sys.executable, "-c", flood]
    outcome = run_trace(request, lambda: subprocess.run(argv, check=True, timeout=60))
    assert outcome.final.state.value == "succeeded", outcome.final
    table = outcome.table("connects")
    assert 0 < len(table.rows) <= 16
    assert outcome.last.stats.map_full_drops >= 40 - 16, outcome.last.stats


@pytest.mark.parametrize(("attach", "names"), [("fentry", "fentry"), ("kprobe", "kprobes")])
def test_tcpconnlat_forced_to_an_option_this_kernel_lacks_is_unsupported(
    attach: str, names: str
) -> None:
    _no_kprobes_nor_fentry()
    request = TraceRequest(
        run_id=f"tcpconnlat-{attach}",
        program="tcpconnlat",
        duration_s=1,
        params={"attach": attach},
    )
    outcome = run_trace(request)
    assert outcome.final.state.value == "unsupported", outcome.final
    assert outcome.final.error is not None
    message = outcome.final.error.message
    assert f"attach={attach}" in message and f"needs {names}" in message, message
    assert "tracepoint" not in message.split(":", 1)[1].split("needs")[0]


@pytest.mark.parametrize(
    ("attach", "point"),
    [("auto", "tracepoint:sched:sched_switch"), ("raw_tracepoint", "raw_tracepoint:sched_switch")],
)
def test_offcputime_weighs_a_named_function_by_its_naps(
    tmp_path: Path, attach: str, point: str
) -> None:
    naps = known.naps_binary(tmp_path)
    with known.started([str(naps), "50"]) as workload:
        request = TraceRequest(
            run_id=f"offcpu-{attach}",
            program="offcputime",
            duration_s=3,
            params={"attach": attach},
            scope=Scope(pid=workload.pid),
        )
        outcome = run_trace(request, workload.go)
        workload.end()
    assert outcome.final.state.value == "succeeded", outcome.final
    assert outcome.last.stats.attach == point
    assert known.check_naps(outcome.last, workload.comm, 50) == []
    top = next(s for s in outcome.stacks().stacks if known.NAP_FUNCTION in ";".join(s.frames))
    # Root first: the process, main, the nap, then the kernel where it blocked.
    joined = ";".join(top.frames)
    assert joined.index("main") < joined.index(known.NAP_FUNCTION) < joined.index("_[k]"), joined


def test_vfs_latency_names_both_missing_options_on_this_kernel() -> None:
    _no_kprobes_nor_fentry()
    outcome = run_trace(TraceRequest(run_id="vfs", program="vfs_latency", duration_s=1))
    assert outcome.final.state.value == "unsupported", outcome.final
    assert outcome.final.error is not None
    message = outcome.final.error.message
    assert "fentry (fentry:vfs_read,vfs_write) needs fentry" in message, message
    assert "kprobe (kprobe:vfs_read,vfs_write) needs kprobes" in message, message


def _compile(source: str, cflags: list[str]) -> None:
    """bcc's compile of a program, loading and attaching nothing (this kernel can attach
    neither kprobes nor fentry, but its clang compiles those options' C)."""
    from bcc import BPF

    class Compiled(BPF):  # type: ignore[misc]
        def _trace_autoload(self) -> None:
            pass

    Compiled(text=source.encode(), cflags=cflags).cleanup()


@pytest.mark.parametrize(
    "program", [name for name, spec in catalog().items() if spec.attach and spec.engine == "bcc"]
)
def test_every_attach_option_compiles_with_the_headers_and_with_btf_offsets(program: str) -> None:
    """Each option's C compiles here, with the headers' offsets and, for one that reads
    kernel structs, with this kernel's own from BTF as approximate headers get them: the VM
    columns of tests/kernel_matrix then only meet their kernel, not a typo."""
    spec = catalog()[program]
    for option in spec.attach:
        request = TraceRequest(run_id=f"compile-{program}", program=program, duration_s=1)
        prepared = prepare(request.model_copy(update={"params": {"attach": option.kind}}))
        cflags = [*prepared.cflags, f"-D{option.define}=1"]
        _compile(prepared.source, cflags)
        if option.fields:
            placed = btf.offsets(dict(option.fields))
            _compile(prepared.source, [*cflags, *(f"-D{d}={o}" for d, o in placed.items())])
