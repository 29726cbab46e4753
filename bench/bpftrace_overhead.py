"""What a bpftrace job adds to bare bpftrace: per event, and from launch to attached.

One run measures, interleaved round by round so drift hits every configuration alike, a
pinned loop of N getppid() calls (syscall_overhead.py's) under the same script:
  untraced   the loop alone
  bare       `bpftrace -f json -e SCRIPT`, started fresh each round
  ours       the `bpftrace` program with the same script through the real TraceRunner, its
             child forked by a zygote as the agent's worker does (allow_bpftrace on)

The script counts getppid() by comm; its BEGIN probe, which bpftrace fires once every other
probe is attached, tells when bare bpftrace is really attached. Ours starts the loop at the
run's `running` state. Each traced round checks the tracer counted every call of the loop
(a tracer that missed them would look free). Start-up: bare from launch to its
`attached_probes` line and to BEGIN's output; ours from TraceRunner.run() to `running`, and
the run's attach_s (start of bpftrace to attached).

    sudo .venv/bin/python bench/bpftrace_overhead.py [--n 5000000] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _main
from syscall_overhead import (
    LOOP_COMM,
    READY,
    WARMUP,
    Tracer,
    build_loop,
    host_facts,
    loop_options,
    print_timings,
    process_attached,
    run_loop,
    runner_attached,
    timing_row,
)

from node_agent.protocol import (
    CounterTable,
    Limits,
    Snapshot,
    TraceRequest,
)
from node_agent.runner import ChildPool
from node_agent.zygote import Zygote

SCRIPT = (
    f'BEGIN {{ printf("{READY}\\n"); }}\n'
    "tracepoint:syscalls:sys_enter_getppid { @[comm] = count(); }\n"
)


@dataclass
class Config:
    name: str
    label: str
    ns_per_call: list[float] = field(default_factory=list)
    counted: list[int] = field(default_factory=list)  # the loop's getppid calls it saw
    # start-up, seconds: bare: to attached_probes, to BEGIN; ours: to running, attach_s
    startup: dict[str, list[float]] = field(default_factory=dict)

    def started(self, what: str, seconds: float) -> None:
        self.startup.setdefault(what, []).append(seconds)


# -- bare bpftrace --------------------------------------------------------------------------


def _json(wanted: Callable[[dict[str, Any]], bool]) -> Callable[[str], bool]:
    """A read_until() test of one line of bpftrace's JSON output."""

    def test(line: str) -> bool:
        try:
            message = json.loads(line)
        except ValueError:
            return False
        return isinstance(message, dict) and wanted(message)

    return test


def _comm_count(out: str) -> int:
    """The loop's count in the maps bpftrace printed at exit."""
    for line in out.splitlines():
        with contextlib.suppress(ValueError):
            message = json.loads(line)
            if message.get("type") == "map" and "@" in message.get("data", {}):
                return int(message["data"]["@"].get(LOOP_COMM, 0))
    return 0


def bare_attached(bpftrace: str, config: Config, workdir: Path) -> Tracer:
    """Bare bpftrace with SCRIPT until the block ends; yields a getter of the loop's count."""
    script = workdir / "bare.bt"
    script.write_text(SCRIPT)
    steps = [
        ("attached_probes", _json(lambda m: m.get("type") == "attached_probes")),
        ("begin", _json(lambda m: READY in str(m.get("data")))),
    ]
    return process_attached(
        [bpftrace, "-f", "json", str(script)], steps, _comm_count, config.started
    )


# -- ours -----------------------------------------------------------------------------------


def ours_attached(pool: ChildPool, config: Config, round_no: int, guard: bool) -> Tracer:
    """The bpftrace program with SCRIPT through TraceRunner until the block ends; with
    `guard`, the overhead guard reads the kernel's BPF stats (budget high enough never to
    stop: a job's default 10 % would stop this loop, which is all events)."""
    request = TraceRequest(
        run_id=f"bench-{config.name}-{round_no}",
        program="bpftrace",
        params={"script": SCRIPT},
        duration_s=600,
        limits=Limits(overhead_pct=400 if guard else None),
    )

    def count(snapshot: Snapshot | None) -> int:
        if snapshot is None:
            return 0
        config.started("attach_s", snapshot.stats.attach_s)
        return _loop_rows(snapshot.results)

    def running(seconds: float) -> None:
        config.started("running", seconds)

    return runner_attached(request, count, running, allow_bpftrace=True, pool=pool)


def _loop_rows(results: list[Any]) -> int:
    """The loop's count in the `@` counter table of the final snapshot."""
    for table in results:
        if isinstance(table, CounterTable) and table.name == "@":
            return sum(values[0] for keys, values in table.rows if keys == [LOOP_COMM])
    return 0


# -- the run --------------------------------------------------------------------------------


def measure(
    args: argparse.Namespace,
    loop: Path,
    workdir: Path,
    pool: ChildPool,
    configs: list[Config],
    log: Callable[[str], None],
) -> None:
    for round_no in range(args.rounds):
        for config in configs:
            tracer: Tracer | None = None
            if config.name == "bare":
                tracer = bare_attached(args.bpftrace, config, workdir)
            elif config.name.startswith("ours"):
                tracer = ours_attached(pool, config, round_no, config.name == "ours_guard")
            if tracer is None:
                config.ns_per_call.append(run_loop(loop, args.n, args.cpu))
            else:
                with tracer as count:
                    config.ns_per_call.append(run_loop(loop, args.n, args.cpu))
                config.counted.append(count())
            seen = f"  counted {config.counted[-1]}" if config.counted else ""
            log(
                f"round {round_no + 1}/{args.rounds} {config.name:9} "
                f"{config.ns_per_call[-1]:7.1f} ns/call{seen}"
            )


def _ratio(ours: float, base: float) -> float | None:
    return round(ours / base, 3) if base > 0 else None


def summarize(args: argparse.Namespace, configs: list[Config]) -> dict[str, Any]:
    untraced = configs[0].ns_per_call
    expected = args.n + WARMUP
    rows: list[dict[str, Any]] = []
    for c in configs:
        traced = c.ns_per_call is not untraced
        rows.append(
            {
                **timing_row(c.name, c.label, c.ns_per_call, untraced),
                "counted": c.counted,
                # the loop's calls exactly: it calls getppid for nothing else
                "counts_ok": all(x == expected for x in c.counted) if traced else None,
                "startup_s": {k: [round(x, 4) for x in v] for k, v in c.startup.items()},
                "startup_median_s": {
                    k: round(statistics.median(v), 4) for k, v in c.startup.items()
                },
            }
        )
    by = {r["config"]: r for r in rows}
    return {
        "benchmark": "bpftrace_overhead",
        "script": SCRIPT,
        "n": args.n,
        "rounds": args.rounds,
        "cpu": args.cpu,
        "expected_count": expected,
        "host": host_facts(),
        "results": rows,
        "ratio_ours_over_bare": {
            name: {
                "overhead_per_event": _ratio(
                    by[name]["overhead_ns_per_event"], by["bare"]["overhead_ns_per_event"]
                ),
                "overhead_per_event_min": _ratio(
                    by[name]["overhead_min_ns_per_event"], by["bare"]["overhead_min_ns_per_event"]
                ),
                "ns_per_call": _ratio(
                    by[name]["median_ns_per_call"], by["bare"]["median_ns_per_call"]
                ),
                "startup": _ratio(
                    by[name]["startup_median_s"].get("running", 0.0),
                    by["bare"]["startup_median_s"].get("begin", 0.0),
                ),
            }
            for name in ("ours", "ours_guard")
        },
    }


def print_table(summary: dict[str, Any]) -> None:
    print(
        f"\nbpftrace overhead: {summary['n']:,} getppid() per run, pinned to CPU {summary['cpu']}, "
        f"median of {summary['rounds']} interleaved rounds; kernel {summary['host']['kernel']}"
    )
    print_timings(summary["results"], 40)
    print("start-up, median s:")
    for r in summary["results"]:
        for what, seconds in r["startup_median_s"].items():
            print(f"  {r['config']:10} {what:16} {seconds:7.3f}")
    for name, ratios in summary["ratio_ours_over_bare"].items():
        print(
            f"{name}/bare: overhead per event {ratios['overhead_per_event']} (median), "
            f"{ratios['overhead_per_event_min']} (min); ns/call {ratios['ns_per_call']}; "
            f"start-up (running / BEGIN) {ratios['startup']}"
        )
    bad = [r["config"] for r in summary["results"] if r["counts_ok"] is False]
    if bad:
        print(f"WARNING: counts off (expected {summary['expected_count']}) for: {', '.join(bad)}")


def main() -> int:
    args = loop_options(__doc__).parse_args()
    if _main.not_root():
        return 2
    log = _main.progress(args)
    pool = ChildPool(Zygote.fork())  # before any thread, as the agent's worker does
    configs = [
        Config("untraced", "untraced"),
        Config("bare", "bare bpftrace -f json"),
        Config("ours", "ours: bpftrace program (TraceRunner)"),
        Config("ours_guard", "ours, overhead guard on (kernel stats)"),
    ]
    try:
        with tempfile.TemporaryDirectory(prefix="ft-bench-bt-") as tmp:
            loop = build_loop(Path(tmp))
            measure(args, loop, Path(tmp), pool, configs, log)
    finally:
        pool.close()
    return _main.finish(args, summarize(args, configs), print_table)


if __name__ == "__main__":
    sys.exit(main())
