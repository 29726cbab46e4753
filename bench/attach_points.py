"""What an attach option costs the traced work: offcputime by raw tracepoint and by tracepoint
(both on this kernel), against the same workload untraced, in the same run.

The workload is a ping-pong of one byte over two pipes between two processes pinned to one
CPU: every round trip is two context switches, each a sched_switch the program handles. The
kernel's BPF stats cannot show this difference (a tracepoint formats its record before the
program runs, outside the program's own run time): the workload's elapsed time can.

    sudo .venv/bin/python bench/attach_points.py [--rounds 5] [--trips 200000] [--json]
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

import _main

from node_agent.protocol import Limits, RunEvent, RunState, StateChange, TraceRequest
from node_agent.runner import TraceRunner

OPTIONS = ("untraced", "raw_tracepoint", "tracepoint")

PINGPONG = r"""
import os, sys, time
trips = int(sys.argv[1])
a_r, a_w = os.pipe(); b_r, b_w = os.pipe()
if os.fork() == 0:
    for _ in range(trips):
        os.read(a_r, 1); os.write(b_w, b"x")
    os._exit(0)
start = time.perf_counter()
for _ in range(trips):
    os.write(a_w, b"x"); os.read(b_r, 1)
print(time.perf_counter() - start)
os.wait()
"""


def _pingpong(trips: int, cpu: int) -> float:
    argv = ["taskset", "-c", str(cpu), sys.executable, "-c", PINGPONG, str(trips)]
    done = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=600)
    return float(done.stdout.strip())


def _traced(option: str, trips: int, cpu: int) -> float:
    """The workload's elapsed time while offcputime traces (unscoped) with `option`."""
    attached = threading.Event()

    def on_event(event: RunEvent) -> None:
        if isinstance(event, StateChange) and event.state is RunState.running:
            attached.set()

    request = TraceRequest(
        run_id=f"bench-{option}",
        program="offcputime",
        duration_s=600,
        params={"attach": option},
        limits=Limits(overhead_pct=None),
    )
    runner = TraceRunner(request, on_event)
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        if not attached.wait(120):
            raise RuntimeError(f"offcputime attach={option} did not start")
        return _pingpong(trips, cpu)
    finally:
        runner.cancel()
        thread.join(60)


def main() -> int:
    parser = _main.options(__doc__, rounds=5)
    parser.add_argument("--trips", type=int, default=200_000, help="round trips per sample")
    args = parser.parse_args()
    log = _main.progress(args)
    cpu = (os.cpu_count() or 1) - 1
    samples: dict[str, list[float]] = {o: [] for o in OPTIONS}
    for round_ in range(args.rounds):
        for option in OPTIONS:  # interleaved: drift in the machine's load hits all alike
            elapsed = (
                _pingpong(args.trips, cpu)
                if option == "untraced"
                else _traced(option, args.trips, cpu)
            )
            samples[option].append(elapsed)
            log(f"round {round_ + 1}: {option:<15} {elapsed:.3f} s")
    base = _main.median(samples["untraced"]) or 1.0
    medians = {o: _main.median(v) or 0.0 for o, v in samples.items()}
    summary: dict[str, Any] = {
        "machine": _main.machine(trips=args.trips, cpu=cpu),
        "samples": samples,
        "median_s": medians,
        "ratio_to_untraced": {o: round(m / base, 3) for o, m in medians.items()},
        "raw_over_tracepoint": round(medians["raw_tracepoint"] / medians["tracepoint"], 3),
    }

    def table(s: dict[str, Any]) -> None:
        print(f"{'option':<15} {'median s':>9} {'x untraced':>11}")
        for option in OPTIONS:
            print(
                f"{option:<15} {s['median_s'][option]:>9.3f} {s['ratio_to_untraced'][option]:>11}"
            )
        print(f"raw tracepoint / tracepoint: {s['raw_over_tracepoint']}")

    return _main.finish(args, summary, table)


if __name__ == "__main__":
    sys.exit(main())
