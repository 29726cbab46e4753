"""Per-event cost of the `syscalls` program on a tight getppid() loop, next to bpftrace.

One run measures, interleaved round by round so drift hits every configuration alike:
  untraced          the loop alone
  bpftrace          the loop under `tracepoint:raw_syscalls:sys_enter { @[comm] = count(); }`
  ours/per_process  the loop under our syscalls program (per_process=true) via TraceRunner
  ours/global       the same with per_process=false

Each tracer is attached before the loop starts, and each traced round checks that the
tracer counted the loop's syscalls (a tracer that missed them would look free).

    sudo .venv/bin/python bench/syscall_overhead.py [--n 5000000] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import _main

from node_agent.protocol import (
    CounterTable,
    Limits,
    RunEvent,
    RunState,
    Snapshot,
    StateChange,
    TraceRequest,
)
from node_agent.runner import TraceRunner

Tracer = contextlib.AbstractContextManager[Callable[[], int]]  # yields a getter of its count
LOOP_COMM = "ft_sysloop"  # the loop binary's name: what bpftrace and we see as comm
WARMUP = 1000  # getppid() calls before the timed ones; counted by the tracers too
BPFTRACE_PROG = "tracepoint:raw_syscalls:sys_enter { @[comm] = count(); }"
# A BEGIN probe fires only after every other probe is attached: our "attached" marker.
READY = "ft-ready"
BPFTRACE_READY = f'BEGIN {{ printf("{READY}\\n"); }}'

LOOP_C = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long n = atol(argv[1]), warm = atol(argv[2]);
    struct timespec a, b;
    for (long i = 0; i < warm; i++)
        syscall(SYS_getppid);
    clock_gettime(CLOCK_MONOTONIC, &a); /* vDSO: not a syscall */
    for (long i = 0; i < n; i++)
        syscall(SYS_getppid);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%lld\n", (long long)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec));
    return 0;
}
"""


@dataclass
class Config:
    name: str
    label: str
    ns_per_call: list[float] = field(default_factory=list)
    counted: list[int] = field(default_factory=list)  # loop getppid calls the tracer saw
    attach_wait_s: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.ns_per_call)


def build_loop(workdir: Path) -> Path:
    src = workdir / "loop.c"
    src.write_text(LOOP_C)
    out = workdir / LOOP_COMM
    subprocess.run(["gcc", "-O2", "-o", str(out), str(src)], check=True)
    return out


def run_loop(loop: Path, n: int, cpu: int) -> float:
    """ns per getppid() of one pinned loop run."""
    proc = subprocess.run(
        ["taskset", "-c", str(cpu), str(loop), str(n), str(WARMUP)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(proc.stdout.strip()) / n


# -- bpftrace -------------------------------------------------------------------------------


def read_until(stream: IO[str], wanted: Callable[[str], bool], timeout_s: float) -> str:
    """Lines read until one is `wanted`; raises if the deadline passes first."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.1)
        if not ready:
            continue
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if wanted(line):
            return "".join(seen)
    raise RuntimeError(f"bpftrace stopped short: {''.join(seen)[-2000:]}")


@contextlib.contextmanager
def process_attached(
    argv: Sequence[str],
    steps: Sequence[tuple[str, Callable[[str], bool]]],
    count: Callable[[str], int],
    on_step: Callable[[str, float], None] | None = None,
) -> Iterator[Callable[[], int]]:
    """Runs a tracer process until the block ends, entered once each of `steps` (a name, a
    test of an output line) has been seen in order (`on_step` gets the name and the seconds
    since the start); yields a getter of `count` of its output after SIGINT."""
    started = time.monotonic()
    proc = subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # it warns about RLIMIT_MEMLOCK on memcg-accounted kernels
        text=True,
    )
    assert proc.stdout is not None
    result: dict[str, int] = {}
    try:
        for name, wanted in steps:
            read_until(proc.stdout, wanted, 60)
            if on_step is not None:
                on_step(name, time.monotonic() - started)
        yield lambda: result["count"]
    finally:
        proc.send_signal(2)  # SIGINT: bpftrace prints its maps and exits
        out, _ = proc.communicate(timeout=30)
        result["count"] = count(out)


def bpftrace_attached(bpftrace: str) -> Tracer:
    """Runs bpftrace until the block ends; yields a getter of the loop's count, read at exit."""

    def count(out: str) -> int:
        m = re.search(rf"^@\[{LOOP_COMM}\]: (\d+)$", out, re.M)
        return int(m.group(1)) if m else 0

    steps = [("Attaching", lambda line: "Attaching" in line), (READY, lambda line: READY in line)]
    return process_attached([bpftrace, "-e", f"{BPFTRACE_READY} {BPFTRACE_PROG}"], steps, count)


# -- ours -----------------------------------------------------------------------------------


@contextlib.contextmanager
def runner_attached(
    request: TraceRequest,
    count: Callable[[Snapshot | None], int],
    on_running: Callable[[float], None] | None = None,
    **options: Any,
) -> Iterator[Callable[[], int]]:
    """Runs `request` through the real TraceRunner (with `options`) until the block ends;
    yields a getter of `count` of its last snapshot, read once cancelled. `on_running` gets
    the seconds from run() to the running state."""
    running = threading.Event()
    at: list[float] = []

    def on_event(event: RunEvent) -> None:
        # a final state also wakes the waiter, so a failed start is not a 120 s hang
        if isinstance(event, StateChange) and (
            event.state is RunState.running or event.state.final
        ):
            at.append(time.monotonic())
            running.set()

    runner = TraceRunner(request, on_event, **options)
    finals: list[StateChange] = []
    started = time.monotonic()
    thread = threading.Thread(target=lambda: finals.append(runner.run()), daemon=True)
    thread.start()
    result: dict[str, int] = {}
    try:
        if not running.wait(timeout=120) or finals:
            raise RuntimeError(f"our {request.program} program did not start: {finals}")
        if on_running is not None:
            on_running(at[0] - started)
        yield lambda: result["count"]
    finally:
        runner.cancel()
        thread.join(timeout=60)
        result["count"] = count(runner.last_snapshot)
        if finals and finals[0].state is not RunState.cancelled:
            raise RuntimeError(f"our run ended {finals[0].state.value}: {finals[0].error}")


def ours_attached(per_process: bool, round_no: int, guard: bool) -> Tracer:
    """Our syscalls program through the real TraceRunner until the block ends; with `guard`,
    the overhead guard reads the kernel's BPF stats (budget high enough never to stop)."""
    request = TraceRequest(
        run_id=f"bench-syscalls-{int(per_process)}-{round_no}",
        program="syscalls",
        params={"per_process": per_process},
        duration_s=600,
        limits=Limits(overhead_pct=400 if guard else None),
    )
    return runner_attached(request, lambda snapshot: _getppid_count(snapshot, per_process))


def _getppid_count(snapshot: Snapshot | None, per_process: bool) -> int:
    if snapshot is None:
        return 0
    table = next(r for r in snapshot.results if isinstance(r, CounterTable))
    names = [f.name for f in table.key_fields]
    total = 0
    for keys, values in table.rows:
        row = dict(zip(names, keys, strict=True))
        if row["syscall"] != "getppid":
            continue
        if per_process and row.get("comm") != LOOP_COMM:
            continue
        total += values[0]
    return total


# -- the run --------------------------------------------------------------------------------


def measure(
    args: argparse.Namespace, loop: Path, configs: list[Config], log: Callable[[str], None]
) -> None:
    for round_no in range(args.rounds):
        for config in configs:
            if config.name == "untraced":
                config.ns_per_call.append(run_loop(loop, args.n, args.cpu))
                log(
                    f"round {round_no + 1}/{args.rounds} {config.name:18} "
                    f"{config.ns_per_call[-1]:7.1f} ns/call"
                )
                continue
            tracer: Tracer
            if config.name == "bpftrace":
                tracer = bpftrace_attached(args.bpftrace)
            else:
                tracer = ours_attached(
                    config.name == "ours_per_process", round_no, config.name.endswith("_guard")
                )
            started = time.monotonic()
            with tracer as count:
                config.attach_wait_s.append(time.monotonic() - started)
                config.ns_per_call.append(run_loop(loop, args.n, args.cpu))
            config.counted.append(count())
            log(
                f"round {round_no + 1}/{args.rounds} {config.name:18} "
                f"{config.ns_per_call[-1]:7.1f} ns/call  counted {config.counted[-1]}"
            )


def timing_row(name: str, label: str, ns: list[float], untraced: list[float]) -> dict[str, Any]:
    """One configuration's ns per call against the untraced loop's (the same list: untraced)."""
    traced = ns is not untraced
    return {
        "config": name,
        "label": label,
        "median_ns_per_call": round(statistics.median(ns), 2),
        "min_ns_per_call": round(min(ns), 2),
        "max_ns_per_call": round(max(ns), 2),
        "overhead_ns_per_event": round(statistics.median(ns) - statistics.median(untraced), 2)
        if traced
        else 0.0,
        # noise from other work only ever adds time: min - min is the low-noise estimate
        "overhead_min_ns_per_event": round(min(ns) - min(untraced), 2) if traced else 0.0,
        "samples_ns_per_call": [round(x, 2) for x in ns],
    }


def summarize(args: argparse.Namespace, configs: list[Config]) -> dict[str, Any]:
    untraced = configs[0].ns_per_call
    expected = args.n + WARMUP
    rows: list[dict[str, Any]] = []
    for c in configs:
        sane = all(expected <= x <= expected * 1.01 + 100 for x in c.counted)
        rows.append(
            {
                **timing_row(c.name, c.label, c.ns_per_call, untraced),
                "counted": c.counted,
                "counts_ok": sane if c.name != "untraced" else None,
                "attach_wait_s": [round(x, 2) for x in c.attach_wait_s],
            }
        )
    by_name = {r["config"]: r for r in rows}
    ratios: dict[str, float | None] = {}
    for estimate, suffix in (("overhead_ns_per_event", ""), ("overhead_min_ns_per_event", "_min")):
        bt = by_name["bpftrace"][estimate]
        for name in ("ours_per_process", "ours_global"):
            ours = by_name[name][estimate]
            ratios[name + suffix] = round(ours / bt, 2) if bt > 0 else None
    return {
        "benchmark": "syscall_overhead",
        "n": args.n,
        "rounds": args.rounds,
        "cpu": args.cpu,
        "expected_count": expected,
        "host": host_facts(),
        "results": rows,
        "ratio_ours_over_bpftrace": ratios,
    }


def host_facts() -> dict[str, Any]:
    uname = os.uname()
    facts: dict[str, Any] = {"kernel": uname.release, "cpus": os.cpu_count()}
    with contextlib.suppress(OSError):
        facts["bpf_jit_enable"] = int(Path("/proc/sys/net/core/bpf_jit_enable").read_text())
    with contextlib.suppress(OSError):
        facts["bpf_stats_enabled"] = int(Path("/proc/sys/kernel/bpf_stats_enabled").read_text())
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["bpftrace", "--version"], capture_output=True, text=True, check=True)
        facts["bpftrace"] = out.stdout.strip()
    return facts


def print_table(summary: dict[str, Any]) -> None:
    print(
        f"\nsyscall overhead: {summary['n']:,} getppid() per run, pinned to CPU {summary['cpu']}, "
        f"median of {summary['rounds']} interleaved rounds; kernel {summary['host']['kernel']}"
    )
    print_timings(summary["results"], 46)
    ratios = summary["ratio_ours_over_bpftrace"]
    print(
        "overhead ratio ours/bpftrace (median; min): "
        f"per_process=true {ratios['ours_per_process']}; {ratios['ours_per_process_min']}, "
        f"per_process=false {ratios['ours_global']}; {ratios['ours_global_min']}"
    )
    print(
        "ns/call: median of the rounds; ovh ns/ev: traced - untraced (medians); "
        "(min): the same from the fastest rounds"
    )
    bad = [r["config"] for r in summary["results"] if r["counts_ok"] is False]
    if bad:
        print(f"WARNING: counts off (expected {summary['expected_count']}) for: {', '.join(bad)}")


def print_timings(rows: list[dict[str, Any]], width: int) -> None:
    """The table of timing_row()s, each with its count check (counts_ok)."""
    print(
        f"{'configuration':{width}} {'ns/call':>7} {'min':>6} {'max':>6} "
        f"{'ovh ns/ev':>9} {'(min)':>6}  counts"
    )
    for r in rows:
        ok = {None: "-", True: "ok", False: "WRONG"}[r["counts_ok"]]
        print(
            f"{r['label']:{width}} {r['median_ns_per_call']:7.1f} {r['min_ns_per_call']:6.1f} "
            f"{r['max_ns_per_call']:6.1f} {r['overhead_ns_per_event']:9.1f} "
            f"{r['overhead_min_ns_per_event']:6.1f}  {ok}"
        )


def loop_options(doc: str | None) -> argparse.ArgumentParser:
    """The options of a benchmark of the pinned loop under tracers."""
    parser = _main.options(doc, rounds=5, rounds_help="interleaved rounds (median taken)")
    parser.add_argument("--n", type=int, default=5_000_000, help="timed getppid() calls per run")
    parser.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1, help="CPU to pin to")
    parser.add_argument("--bpftrace", default=shutil.which("bpftrace") or "/usr/bin/bpftrace")
    return parser


def main() -> int:
    args = loop_options(__doc__).parse_args()
    if _main.not_root():
        return 2
    log = _main.progress(args)

    configs = [
        Config("untraced", "untraced"),
        Config("bpftrace", "bpftrace @[comm] = count()"),
        Config("ours_per_process", "ours syscalls per_process=true (TraceRunner)"),
        Config("ours_global", "ours syscalls per_process=false (TraceRunner)"),
        Config("ours_global_guard", "ours per_process=false, overhead guard on (kernel stats)"),
    ]
    with tempfile.TemporaryDirectory(prefix="ft-bench-") as tmp:
        loop = build_loop(Path(tmp))
        measure(args, loop, configs, log)
    return _main.finish(args, summarize(args, configs), print_table)


if __name__ == "__main__":
    sys.exit(main())
