"""Real bpftrace on a workload whose answer is known: a child process we start makes exactly
the calls we choose (getppid N times, lseek at offsets on every power-of-two edge), under a
hostile process name, and bpftrace's output read by Maps must say exactly that."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from node_agent.bpftrace.keys import parse_keys
from node_agent.bpftrace.output import SKIPPED, Maps
from node_agent.kinds import (
    CounterTable,
    EventSamples,
    FoldedStacks,
    LinearHistogram,
    Log2Histogram,
    Result,
)
from node_agent.protocol import Limits

BPFTRACE = shutil.which("bpftrace")
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 or BPFTRACE is None, reason="needs root and bpftrace"),
]

CALLS = 37
COMM = "ev,il\n1"  # a comma and a newline, as a traced host may name a process
EDGES = sorted({0, 1} | {(1 << k) + d for k in range(1, 41) for d in (-1, 0)} | {1 << 62})
NEGATIVE = [-1, -5]
WORKLOAD = f"""
import ctypes, os, sys
ctypes.CDLL(None).prctl(15, {COMM.encode()!r}, 0, 0, 0)  # PR_SET_NAME
sys.stdin.readline()
for _ in range({CALLS}):
    os.getppid()
fd = os.open("/dev/null", os.O_RDONLY)
for offset in {EDGES + NEGATIVE!r}:
    try:
        os.lseek(fd, offset, os.SEEK_SET)
    except OSError:
        pass  # refused, but the tracepoint saw its argument
print("done", flush=True)
"""
# bpftrace prints attached_probes before it attaches them; BEGIN runs once all are attached
SCRIPT = """
BEGIN {{ printf("ready\\n"); }}
tracepoint:syscalls:sys_enter_getppid /pid == {pid}/ {{
  @calls[comm, pid] = count(); @st[comm, kstack] = count(); printf("call %d\\n", pid);
}}
tracepoint:syscalls:sys_enter_lseek /pid == {pid}/ {{
  @h = hist(args->offset); @l = lhist(args->offset, 0, 95, 10);
  @s = sum(args->offset); @mn = min(args->offset); @mx = max(args->offset);
  @a = avg(args->offset); @stat = stats(args->offset); @w[args->whence] = hist(args->offset);
}}
"""
FUNCTIONS = {
    "@calls": "count",
    "@st": "count",
    "@h": "hist",
    "@l": "lhist",
    "@s": "sum",
    "@mn": "min",
    "@mx": "max",
    "@a": "avg",
    "@stat": "stats",
    "@w": "hist",
}


@contextmanager
def child() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKLOAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _line(stream: Any, timeout_s: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout_s)
    assert ready, "bpftrace printed nothing in time"
    return str(stream.readline())


def run_traced() -> list[dict[str, Any]]:
    """bpftrace on the child's calls, SIGINT after they end: every message it printed."""
    assert BPFTRACE is not None
    with child() as work:
        script = SCRIPT.format(pid=work.pid)
        tracer = subprocess.Popen(
            [BPFTRACE, "-f", "json", "-e", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            first = _line(tracer.stdout, 60)
            assert json.loads(first)["type"] == "attached_probes"
            ready = _line(tracer.stdout, 60)
            assert json.loads(ready) == {"type": "printf", "data": "ready\n"}
            assert work.stdin is not None and work.stdout is not None
            work.stdin.write("go\n")
            work.stdin.flush()
            assert work.stdout.readline().strip() == "done"
            tracer.send_signal(signal.SIGINT)
            rest, _ = tracer.communicate(timeout=60)
        finally:
            if tracer.poll() is None:
                tracer.kill()
                tracer.wait()
    lines = [first, ready, *rest.splitlines()]
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.fixture(scope="module")
def results() -> dict[str, Result]:
    maps = Maps(
        limits=Limits(max_samples=10),
        functions=FUNCTIONS,
        keys=parse_keys("@calls=comm,pid;@w=whence"),
        lhist={"@l": (0, 95, 10)},
        key_kinds={"@calls": ["str", "int"], "@st": ["str", "stack"]},
    )
    for message in run_traced():
        maps.take(message)
    out: dict[str, Result] = {}
    for r in maps.results():
        labels = getattr(r, "labels", {})
        out[r.name + (repr(sorted(labels.items())) if labels else "")] = r
    assert SKIPPED not in out, out.get(SKIPPED)
    return out


def test_exactly_n_calls_under_a_hostile_process_name(results: dict[str, Result]) -> None:
    calls = results["@calls"]
    assert isinstance(calls, CounterTable)
    assert [f.name for f in calls.key_fields] == ["comm", "pid"]
    (((comm, pid), values),) = calls.rows
    assert comm == "ev,il\\n1" and isinstance(pid, int) and values == [CALLS]


def test_stack_counts_add_up_root_first(results: dict[str, Result]) -> None:
    stacks = results["@st"]
    assert isinstance(stacks, FoldedStacks)
    assert sum(s.count for s in stacks.stacks) == CALLS
    frames = stacks.stacks[0].frames
    assert frames[0] == "ev,il\\n1"
    assert frames[1].startswith("entry_SYSCALL")  # the syscall entry is the kernel's root


def test_printf_lines_are_bounded_samples(results: dict[str, Result]) -> None:
    printf = results["printf"]
    assert isinstance(printf, EventSamples)
    assert (printf.seen, len(printf.events), printf.dropped) == (CALLS + 1, 10, CALLS + 1 - 10)
    assert all(re.fullmatch(r"call [0-9]+", str(text)) for _, text in printf.events)


def expected_log2() -> Counter[int]:
    # bpftrace 0.17's log2 stops at 2**31: larger values share its top bucket, our slot 32
    return Counter(min(v.bit_length(), 32) for v in EDGES)


def test_hist_lands_every_power_of_two_edge_in_its_slot(results: dict[str, Result]) -> None:
    hist = results["@h"]
    assert isinstance(hist, Log2Histogram)
    assert dict(hist.buckets) == dict(expected_log2())
    for value in EDGES:
        if value < 1 << 31:  # each value within its slot's bounds, as the scale states them
            slot = min(value.bit_length(), 32)
            low, high = hist.scale.bounds(slot)
            assert low is not None and high is not None and low <= value <= high
    negative = results["@h.negative"]
    assert isinstance(negative, CounterTable) and negative.rows == [([], [len(NEGATIVE)])]
    keyed = results["@w[('whence', 0)]"]
    assert isinstance(keyed, Log2Histogram) and keyed.buckets == hist.buckets


def test_lhist_slots_and_bpftrace_overflow(results: dict[str, Result]) -> None:
    linear = results["@l"]
    assert isinstance(linear, LinearHistogram)
    # lhist(v, 0, 95, 10): 9 buckets; bpftrace counts 90..94 with the overflow
    assert (linear.min, linear.max, linear.step) == (0, 90, 10)
    want: Counter[int] = Counter()
    for v in EDGES + NEGATIVE:
        want[0 if v < 0 else 10 if v >= 90 else v // 10 + 1] += 1
    assert dict(linear.buckets) == dict(want)


def test_sum_min_max_avg_stats_are_exact(results: dict[str, Result]) -> None:
    values = EDGES + NEGATIVE
    total = sum(values)
    mean = abs(total) // len(values) * (1 if total >= 0 else -1)
    want = {
        "@s": [total],
        "@mn": [min(values)],
        "@mx": [max(values)],
        "@a": [mean],
        "@stat": [len(values), mean, total],
    }
    for name, row in want.items():
        table = results[name]
        assert isinstance(table, CounterTable)
        assert table.rows == [([], row)], name
