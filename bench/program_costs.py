"""What each catalog program costs to start and to run, against bare bcc in the same run.

For every program in node_agent.programs.catalog(), a 2 s trace with a 1 s interval goes
through the real TraceRunner (child process); we record the time from the request to the
running state, the snapshot stats (compile_s, attach_s, peak_rss_mb with LLVM, agent_cpu_s)
and the child's CPU while tracing. Then the same prepared source and -D flags are loaded
with a plain `BPF(text=..., cflags=...)` in a fresh python process (time, ru_maxrss), so the
ratio shows what our orchestration (child, pydantic, decoders, snapshots) adds.

    sudo .venv/bin/python bench/program_costs.py [--rounds 3] [--only syscalls,...] [--json]
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import _main
from _baselines import bare_child

from node_agent.programs import catalog
from node_agent.protocol import MapDecl, MapKind, RunEvent, RunState, Snapshot, TraceRequest
from node_agent.runner import TraceRunner
from node_agent.trace import prepare

DURATION_S = 2.0
INTERVAL_S = 1.0

# The custom program needs a source: the smallest useful one, a counter by syscall number.
CUSTOM_SOURCE = """
BPF_HASH(counts, u32, u64, FT_MAP_ENTRIES);
TRACEPOINT_PROBE(raw_syscalls, sys_enter)
{
    if (!ft_in_scope())
        return 0;
    u32 key = args->id;
    u64 zero = 0;
    u64 *count = counts.lookup_or_try_init(&key, &zero);
    if (count)
        (*count)++;
    return 0;
}
"""

# Runs in a fresh interpreter: import bcc, load the program (auto-attaches tracepoints),
# attach perf samples like the runner does, and report times and peak RSS.
BARE_SCRIPT = r"""
import json, resource, sys, time
t0 = time.monotonic()
cfg = json.loads(sys.stdin.read())
from bcc import BPF, PerfSWConfig, PerfType
t1 = time.monotonic()
b = BPF(text=cfg["source"], cflags=cfg["cflags"])
for fn, freq in cfg["perf"]:
    b.load_func(fn, BPF.PERF_EVENT)
    b.attach_perf_event(ev_type=PerfType.SOFTWARE, ev_config=PerfSWConfig.CPU_CLOCK,
                        fn_name=fn, sample_freq=freq)
t2 = time.monotonic()
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1,
                  "maxrss_mb": ru.ru_maxrss / 1024, "cpu_s": ru.ru_utime + ru.ru_stime}))
sys.stdout.flush()
b.cleanup()
"""


@dataclass
class OursRun:
    state: str
    error: str | None = None
    to_running_s: float | None = None
    compile_s: float | None = None
    attach_s: float | None = None
    peak_rss_mb: float | None = None
    agent_cpu_s: float | None = None
    tracing_cpu_pct: float | None = None  # child CPU between the first and final snapshot


@dataclass
class BareRun:
    ok: bool
    error: str | None = None
    wall_s: float | None = None
    import_s: float | None = None
    load_s: float | None = None
    maxrss_mb: float | None = None
    cpu_s: float | None = None


@dataclass
class ProgramResult:
    name: str
    ours: list[OursRun] = field(default_factory=list)
    bare: list[BareRun] = field(default_factory=list)


def make_request(name: str, run_id: str) -> TraceRequest:
    extra: dict[str, Any] = {}
    if name == "custom":
        extra = {"source": CUSTOM_SOURCE, "maps": [MapDecl(name="counts", kind=MapKind.counter)]}
    return TraceRequest(
        run_id=run_id, program=name, duration_s=DURATION_S, interval_s=INTERVAL_S, **extra
    )


def run_ours(request: TraceRequest) -> OursRun:
    running_at: list[float] = []
    snapshots: list[Snapshot] = []

    def on_event(event: RunEvent) -> None:
        if isinstance(event, Snapshot):
            snapshots.append(event)
        elif event.state is RunState.running:
            running_at.append(time.monotonic())

    runner = TraceRunner(request, on_event, allow_custom=True)
    started = time.monotonic()
    final = runner.run()
    if final.state is not RunState.succeeded or not snapshots:
        error = final.error.message if final.error else f"ended {final.state.value}"
        return OursRun(state=final.state.value, error=error)
    last = snapshots[-1]
    run = OursRun(
        state=final.state.value,
        to_running_s=running_at[0] - started if running_at else None,
        compile_s=last.stats.compile_s,
        attach_s=last.stats.attach_s,
        peak_rss_mb=last.stats.peak_rss_mb,
        agent_cpu_s=last.stats.agent_cpu_s,
    )
    if len(snapshots) >= 2:
        first = snapshots[0]
        span = last.interval_end - first.interval_end
        if span > 0:
            cpu = last.stats.agent_cpu_s - first.stats.agent_cpu_s
            run.tracing_cpu_pct = 100 * cpu / span
    return run


def run_bare(request: TraceRequest) -> BareRun:
    prepared = prepare(request, allow_custom=True)
    perf = [(s.fn, int(prepared.params[s.frequency_param])) for s in prepared.spec.perf_samples]
    cfg = json.dumps({"source": prepared.source, "cflags": prepared.cflags, "perf": perf})
    wall, line, err = bare_child(BARE_SCRIPT, cfg, timeout_s=300)
    if not line.strip():
        return BareRun(ok=False, error=(err.strip().splitlines() or ["no output"])[-1])
    data = json.loads(line)
    return BareRun(
        ok=True,
        wall_s=wall,
        import_s=data["import_s"],
        load_s=data["load_s"],
        maxrss_mb=data["maxrss_mb"],
        cpu_s=data["cpu_s"],
    )


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def summarize_one(result: ProgramResult) -> dict[str, Any]:
    ok = [r for r in result.ours if r.state == RunState.succeeded.value]
    bare_ok = [b for b in result.bare if b.ok]
    row: dict[str, Any] = {"program": result.name, "rounds": len(result.ours)}
    if not ok:
        row["state"] = result.ours[-1].state
        row["reason"] = result.ours[-1].error
        return row
    row["state"] = RunState.succeeded.value
    if len(ok) < len(result.ours):
        row["reason"] = f"{len(result.ours) - len(ok)} round(s) failed: " + str(
            next(r.error for r in result.ours if r.state != RunState.succeeded.value)
        )
    for attr, digits in (
        ("to_running_s", 3),
        ("compile_s", 3),
        ("attach_s", 4),
        ("peak_rss_mb", 1),
        ("agent_cpu_s", 3),
        ("tracing_cpu_pct", 2),
    ):
        row[attr] = _round(_main.median([getattr(r, attr) for r in ok]), digits)
    if bare_ok:
        for attr, digits in (
            ("wall_s", 3),
            ("import_s", 3),
            ("load_s", 3),
            ("maxrss_mb", 1),
            ("cpu_s", 3),
        ):
            row[f"bare_{attr}"] = _round(_main.median([getattr(b, attr) for b in bare_ok]), digits)
        row["ratio_wall"] = round(row["to_running_s"] / row["bare_wall_s"], 2)
        row["ratio_rss"] = round(row["peak_rss_mb"] / row["bare_maxrss_mb"], 2)
        row["ratio_load"] = round((row["compile_s"] + row["attach_s"]) / row["bare_load_s"], 2)
    else:
        row["bare_error"] = next((b.error for b in result.bare if not b.ok), None)
    return row


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(summary: dict[str, Any]) -> None:
    print(
        f"\nprogram costs: {DURATION_S:g}s trace, {INTERVAL_S:g}s interval, median of "
        f"{summary['rounds']} round(s); kernel {summary['kernel']}, {summary['cpus']} CPUs"
    )
    head = (
        f"{'program':16} {'->run s':>7} {'comp s':>6} {'att s':>6} {'RSS MB':>6} "
        f"{'cpu s':>6} {'trc %':>6} | {'bare s':>6} {'load s':>6} {'RSS MB':>6} | "
        f"{'x wall':>6} {'x load':>6} {'x RSS':>6}"
    )
    print(head)
    print("-" * len(head))
    skipped = []
    for r in summary["programs"]:
        if r["state"] != RunState.succeeded.value:
            skipped.append(r)
            continue
        print(
            f"{r['program']:16} {_fmt(r.get('to_running_s'), '7.2f')} "
            f"{_fmt(r.get('compile_s'), '6.2f')} {_fmt(r.get('attach_s'), '6.3f')} "
            f"{_fmt(r.get('peak_rss_mb'), '6.0f')} {_fmt(r.get('agent_cpu_s'), '6.2f')} "
            f"{_fmt(r.get('tracing_cpu_pct'), '6.2f')} | {_fmt(r.get('bare_wall_s'), '6.2f')} "
            f"{_fmt(r.get('bare_load_s'), '6.2f')} {_fmt(r.get('bare_maxrss_mb'), '6.0f')} | "
            f"{_fmt(r.get('ratio_wall'), '6.2f')} {_fmt(r.get('ratio_load'), '6.2f')} "
            f"{_fmt(r.get('ratio_rss'), '6.2f')}"
        )
        if r.get("reason") or r.get("bare_error"):
            print(f"{'':16} note: {r.get('reason') or ''} {r.get('bare_error') or ''}".rstrip())
    print(
        "->run s: request to running state (child start, imports, compile, attach); comp/att: "
        "snapshot stats;\nRSS: child peak RSS incl. LLVM; cpu s: child CPU for the whole run; "
        "trc %: child CPU while tracing;\nbare: fresh python + BPF(text=...) of the same source; "
        "x: ours / bare."
    )
    if skipped:
        print("\nnot run on this host:")
        for r in skipped:
            print(f"  {r['program']:16} {r['state']}: {r.get('reason')}")


def main() -> int:
    parser = _main.options(__doc__, rounds=3, rounds_help="runs per program (median taken)")
    parser.add_argument("--only", default="", help="comma-separated program names")
    args = parser.parse_args()
    if _main.not_root():
        return 2
    names = list(catalog())
    if args.only:
        wanted = set(args.only.split(","))
        names = [n for n in names if n in wanted]
    log = _main.progress(args)
    # Warm the page cache (libbcc, LLVM, headers) so the first program is not charged for it.
    run_bare(make_request("syscalls", "bench-warmup"))
    results = {name: ProgramResult(name) for name in names}
    for round_no in range(args.rounds):
        for name in names:
            request = make_request(name, f"bench-{name}-{round_no}")
            ours = run_ours(request)
            results[name].ours.append(ours)
            if ours.state == RunState.succeeded.value:
                results[name].bare.append(run_bare(request))
            log(
                f"round {round_no + 1}/{args.rounds} {name:16} {ours.state}"
                + (f" ({ours.error})" if ours.error else "")
            )
    summary = _main.machine(
        benchmark="program_costs", duration_s=DURATION_S, interval_s=INTERVAL_S, rounds=args.rounds
    )
    summary["programs"] = [summarize_one(results[n]) for n in names]
    return _main.finish(args, summary, print_table)


if __name__ == "__main__":
    sys.exit(main())
