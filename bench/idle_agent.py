"""What an idle agent costs: PSS and CPU of all its processes, before and after, in one run.

before: the agent of commit 5353300 (a Celery worker and its warm spare child, which has
imported pydantic, the catalog and bcc), run from a temporary `git worktree` on its own
PYTHONPATH (removed after). after: this checkout's agent (the worker and its zygote).
Each joins a real stack (redis-server, a migrated SQLite database, `fleettrace serve`) with
its host's own Redis identity, heartbeating every 10 s; after --settle seconds (the first
heartbeat and the capability probe are over) it is left alone for --seconds while every
--every seconds the PSS of each of its processes is read (/proc/PID/smaps_rollup, the
worker and all its descendants). CPU is user+system time over the window of the whole
tree, reaped children included (/proc/PID/stat utime+stime+cutime+cstime). The two idle
windows run one after the other, each agent alone (their shared files would split PSS).

Then both agents run side by side and take turns at --jobs `syscalls` jobs, timed as
bench/submit_latency.py times them: the orchestration overhead (total - compile -
interval) and the `start` stage (task received -> compile begins) at the median.

    sudo .venv/bin/python bench/idle_agent.py [--seconds 300] [--jobs 10] [--json]
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _main
from _stack import add_host, agent_worker, controller, wait_online
from submit_latency import JobSample, one_job

from devstack.harness import wait_for
from node_agent.selfstats import family, process_cost, pss_bytes

BEFORE_COMMIT = "5353300"
AGENTS = ("before", "after")
REPO = Path(__file__).resolve().parent.parent


def cpu_s(pid: int) -> float | None:
    """Its own CPU and that of the children it reaped; None once it is gone."""
    cost = process_cost(pid)
    return cost.cpu_s if cost is not None else None


def role(pid: int, root: int) -> str:
    """What the process is in the agent: worker, zygote, spare, probe, trace child."""
    if pid == root:
        return "worker"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        root_argv = Path(f"/proc/{root}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    if b"node_agent.child" in argv:
        return "spare child" if b"--warm" in argv else "trace child"
    if b"node_agent.zygote" in argv:
        return "zygote (respawned)"
    if b"probe" in argv:
        return "probe"
    if argv == root_argv:
        return "zygote" if ppid == root else "trace child"
    return "other"


@dataclass
class Idle:
    agent: str
    seconds: float
    samples: int = 0
    pss_mb: dict[str, float] = field(default_factory=dict)  # mean per role, and "total"
    pss_max_mb: dict[str, float] = field(default_factory=dict)
    cpu_pct: dict[str, float] = field(default_factory=dict)  # % of one CPU, per role and total
    processes: dict[str, int] = field(default_factory=dict)


def measure_idle(agent: str, root: int, seconds: float, every: float) -> Idle:
    """PSS per role sampled every `every` s, CPU per role over `seconds`, of `root`'s tree."""
    out = Idle(agent=agent, seconds=seconds)
    start_cpu = {p: cpu_s(p) or 0.0 for p in family(root)}
    sums: dict[str, float] = {}
    began = time.monotonic()
    while True:
        totals: dict[str, float] = {}
        for pid in family(root):
            pss = pss_bytes(pid)
            if pss is not None:
                name = role(pid, root)
                totals[name] = totals.get(name, 0.0) + pss / 2**20
        totals["total"] = sum(totals.values())
        for name, mb in totals.items():
            sums[name] = sums.get(name, 0.0) + mb
            out.pss_max_mb[name] = max(out.pss_max_mb.get(name, 0.0), mb)
        out.samples += 1
        if time.monotonic() - began >= seconds:
            break
        time.sleep(min(every, max(0.0, began + seconds - time.monotonic())))
    elapsed = time.monotonic() - began
    spent: dict[str, float] = {}
    for pid in family(root):
        name = role(pid, root)
        out.processes[name] = out.processes.get(name, 0) + 1
        now = cpu_s(pid)
        if now is not None:
            spent[name] = spent.get(name, 0.0) + now - start_cpu.get(pid, 0.0)
    spent["total"] = sum(spent.values())
    out.pss_mb = {name: total / out.samples for name, total in sums.items()}
    out.cpu_pct = {name: 100 * t / elapsed for name, t in spent.items()}
    return out


@contextlib.contextmanager
def before_checkout() -> Iterator[Path]:
    """The agent package of BEFORE_COMMIT in a temporary git worktree; yields its PYTHONPATH."""
    path = Path(tempfile.mkdtemp(prefix="ft-idle-before-"))
    path.rmdir()
    git = ["git", "-C", str(REPO)]
    subprocess.run(
        [*git, "worktree", "add", "--detach", str(path), BEFORE_COMMIT],
        check=True,
        capture_output=True,
    )
    try:
        yield path / "agent"
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(path)], check=False)


def wait_ready(log_path: Path, proc: subprocess.Popen[bytes], settle: float) -> None:
    """Until Celery says the worker is ready, then `settle` more seconds (first beat, probe)."""

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the agent exited with {proc.returncode}")
        return b" ready." in log_path.read_bytes()

    wait_for(ready, 120, "the agent ready")
    time.sleep(settle)


def summarize(
    idle: dict[str, Idle],
    first: dict[str, JobSample],
    jobs: dict[str, list[JobSample]],
    meta: dict[str, Any],
) -> dict[str, Any]:
    medians = {
        agent: {
            stage: _main.median([getattr(s, stage) for s in samples])
            for stage in ("overhead", "start", "total", "compile")
        }
        for agent, samples in jobs.items()
    }
    before, after = idle["before"], idle["after"]
    ratios = {
        "pss_total_after_vs_before": after.pss_mb["total"] / before.pss_mb["total"],
        "cpu_total_after_vs_before": (
            after.cpu_pct["total"] / before.cpu_pct["total"] if before.cpu_pct["total"] else None
        ),
    }
    if medians["before"]["overhead"] and medians["after"]["overhead"]:
        ratios["overhead_after_vs_before"] = (
            medians["after"]["overhead"] / medians["before"]["overhead"]
        )
    return {
        "benchmark": "idle_agent",
        **meta,
        "targets": {"pss_total_mb": 80, "cpu_total_pct": 0.2, "overhead_median_s": 0.1},
        "idle": {agent: asdict(i) for agent, i in idle.items()},
        "first": {agent: asdict(sample) for agent, sample in first.items()},
        "median": medians,
        "ratios": ratios,
        "samples": {agent: [asdict(s) for s in samples] for agent, samples in jobs.items()},
    }


def print_table(summary: dict[str, Any]) -> None:
    idle = summary["idle"]
    print(
        f"\nidle agent: {idle['after']['seconds']:g}s idle each, heartbeat every 10 s, "
        f"load average {summary['load_before']} at the start, {summary['load_after']} at the"
        f" end; kernel {summary['kernel']}, {summary['cpus']} CPUs"
    )
    print(f"{'agent':8}{'process':20}{'count':>6}{'PSS MB':>9}{'max':>8}{'CPU %':>8}")
    for agent in AGENTS:
        data = idle[agent]
        names = [n for n in data["pss_mb"] if n != "total"] + ["total"]
        for name in names:
            count = data["processes"].get(name, "") if name != "total" else ""
            print(
                f"{agent:8}{name:20}{count!s:>6}{data['pss_mb'][name]:9.1f}"
                f"{data['pss_max_mb'][name]:8.1f}{data['cpu_pct'].get(name, 0.0):8.3f}"
            )
    med = summary["median"]
    print(
        f"\nsubmit latency (ms): the first trace of each idle agent, then the median of "
        f"{len(summary['samples']['after'])} back-to-back jobs each"
    )
    print(f"{'agent':16}{'overhead':>10}{'start':>8}{'compile':>9}{'total':>8}")
    rows = [(f"{a} first", summary["first"][a]) for a in AGENTS]
    rows += [(f"{a} median", med[a]) for a in AGENTS]
    for label, m in rows:
        print(
            f"{label:16}{m['overhead'] * 1000:10.1f}{m['start'] * 1000:8.1f}"
            f"{m['compile'] * 1000:9.1f}{m['total'] * 1000:8.1f}"
        )
    r, after = summary["ratios"], idle["after"]
    print(
        f"\nafter/before: PSS x{r['pss_total_after_vs_before']:.2f}, "
        f"CPU x{r['cpu_total_after_vs_before'] or 0:.2f}, "
        f"overhead x{r.get('overhead_after_vs_before', 0):.2f}"
    )
    verdicts = (
        after["pss_mb"]["total"] <= 80,
        after["cpu_pct"]["total"] <= 0.2,
        (med["after"]["overhead"] or 1) < 0.1,
    )
    print(
        "targets (<= 80 MB PSS, <= 0.2 % CPU, overhead < 100 ms): "
        + ", ".join("met" if v else "NOT met" for v in verdicts)
    )


def main() -> int:
    parser = _main.options(__doc__, db=True)
    parser.add_argument("--seconds", type=float, default=300, help="idle window per agent, s")
    parser.add_argument("--settle", type=float, default=30, help="wait after ready, s")
    parser.add_argument("--every", type=float, default=10, help="PSS sampling period, s")
    parser.add_argument("--jobs", type=int, default=10, help="latency jobs per agent")
    args, log = _main.start(parser, root=True)
    load_before = os.getloadavg()
    idle: dict[str, Idle] = {}
    first: dict[str, JobSample] = {}
    jobs: dict[str, list[JobSample]] = {}
    with (
        before_checkout() as old_path,
        controller("ft-bench-idle-", args.db) as stack,
        stack.readers() as (sessions, client),
        stack.serve() as base,
        stack.api(base, timeout_s=30) as api,
    ):
        workdir = stack.workdir
        paths = {"before": old_path, "after": None}
        urls = {agent: add_host(base, stack.admin, f"idle-{agent}") for agent in AGENTS}
        logs = {agent: workdir / f"agent-{agent}-jobs.log" for agent in AGENTS}

        @contextlib.contextmanager
        def agent(name: str, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
            with (
                open(log_path, "wb") as out,
                agent_worker(f"idle-{name}", urls[name], out, workdir, paths[name]) as proc,
            ):
                yield proc

        for name in AGENTS:
            idle_log = workdir / f"agent-{name}-idle.log"
            with agent(name, idle_log) as proc:
                wait_ready(idle_log, proc, args.settle)
                log(f"{name}: idle for {args.seconds:g}s (pid {proc.pid})")
                idle[name] = measure_idle(name, proc.pid, args.seconds, args.every)
                log(
                    f"{name}: PSS {idle[name].pss_mb['total']:.1f} MB, "
                    f"CPU {idle[name].cpu_pct['total']:.3f} %"
                )
        with agent("before", logs["before"]) as old, agent("after", logs["after"]) as new:
            wait_ready(logs["before"], old, 0)
            wait_ready(logs["after"], new, 0)
            wait_online(api, 2)

            def job(name: str) -> JobSample:
                return one_job(api, sessions, client, logs[name], 2.0, 1.0, f"idle-{name}")

            # The first trace of an idle agent: the new one has no warm child yet.
            first = {name: job(name) for name in AGENTS}
            log(
                f"first trace: overhead before {first['before'].overhead * 1000:.0f} ms, "
                f"after {first['after'].overhead * 1000:.0f} ms"
            )
            after, before = _main.side_by_side(
                args.jobs,
                lambda: job("after"),
                lambda: job("before"),
                log,
                lambda a, b: (
                    f"overhead after {a.overhead * 1000:.0f} ms, before {b.overhead * 1000:.0f} ms"
                ),
            )
            jobs = {"before": before, "after": after}
    meta = _main.machine(
        before_commit=BEFORE_COMMIT,
        load_before=" ".join(f"{x:.2f}" for x in load_before),
        load_after=" ".join(f"{x:.2f}" for x in os.getloadavg()),
    )
    return _main.finish(args, summarize(idle, first, jobs, meta), print_table)


if __name__ == "__main__":
    sys.exit(main())
