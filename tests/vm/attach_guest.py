"""The guest side of the attach-option VM test: on the kernel it starts on, probe the host as
the agent does, then run each of tcpconnlat, offcputime and vfs_latency with each attach
option it has that `auto` would not pick (the kernel matrix runs `auto`), forced
(`attach=<kind>`), through the agent's runner with the probe's features, on its known
workload; one JSON line per run.

    python -m tests.vm.attach_guest --out results.jsonl

Lines: {"type": "probe"} (the three programs' support), one {"type": "run"} per program and
option (state, reason, the stats' attach point, what is wrong with the answer), {"type": "end"}.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from node_agent.attach import unavailable
from node_agent.capabilities import probe
from node_agent.programs import get_program
from node_agent.programs.spec import AUTO
from node_agent.protocol import HostCapabilities, Limits, Scope, Snapshot, TraceRequest
from node_agent.runner import ChildPool
from node_agent.zygote import Zygote
from tests.helpers import run_trace
from tests.node_agent.programs import known_workloads as known

log = logging.getLogger("vm.attach_guest")
PROGRAMS = ("tcpconnlat", "offcputime", "vfs_latency")
PORT = 47201
CONNECTS = 5
NAPS = 50
READS, WRITES = 200, 100
DURATION_S = 8.0  # emulation: the workloads take seconds where they take a fraction here

Check = Callable[[Snapshot], list[str]]


@contextmanager
def _workload(program: str, tmp: Path) -> Iterator[tuple[known.Workload, Check]]:
    """The program's known workload, started and waiting, and the check of its answer."""
    if program == "tcpconnlat":
        with (
            known.netns("ft-attach-guest") as ns,
            known.started(known.connects_argv(ns, PORT, CONNECTS)) as w,
        ):
            yield w, lambda s: known.check_connects(s, w.pid, w.comm, PORT, CONNECTS)
    elif program == "offcputime":
        with known.started([str(known.naps_binary(tmp)), str(NAPS)]) as w:
            yield w, lambda s: known.check_naps(s, w.comm, NAPS)
    else:
        mount = tmp / "tmpfs"
        mount.mkdir(exist_ok=True)
        with known.started(known.file_io_argv(mount, READS, WRITES)) as w:
            yield w, lambda s: known.check_file_io(s, READS, WRITES)


def run_one(
    program: str, kind: str, caps: HostCapabilities, pool: ChildPool, tmp: Path
) -> dict[str, Any]:
    """One program with one attach option forced, never raising: what happened is its record."""
    record: dict[str, Any] = {"type": "run", "program": program, "attach": kind}
    started = time.monotonic()
    want = next(o.point for o in get_program(program).attach if o.kind == kind)
    try:
        with _workload(program, tmp) as (workload, check):
            request = TraceRequest(
                run_id=f"attach-{program}-{kind}",
                program=program,
                duration_s=DURATION_S,
                params={"attach": kind},
                scope=Scope(pid=workload.pid),
                limits=Limits(overhead_pct=None),  # emulation would trip any real budget
            )
            outcome = run_trace(request, workload.go, capabilities=caps, pool=pool)
            workload.end()
        final = outcome.final
        record["state"] = final.state.value
        record["reason"] = final.error.message if final.error else (final.reason or "")
        if outcome.snapshots:
            snapshot = outcome.last
            record.update(
                stats_attach=snapshot.stats.attach,
                want_attach=want,
                compile_s=round(snapshot.stats.compile_s, 2),
                problems=check(snapshot),
            )
    except Exception as exc:
        record.update(state="error", reason=f"{type(exc).__name__}: {exc}")
    record["wall_s"] = round(time.monotonic() - started, 1)
    log.info("%s", record)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="ft-attach-") as tmp, args.out.open("a") as out:
        _run(out, Path(tmp))
    return 0


def _run(out: IO[str], tmp: Path) -> None:
    def write(record: dict[str, Any]) -> None:
        out.write(json.dumps(record) + "\n")
        out.flush()

    started = time.monotonic()
    caps = probe()
    support = {p.program: p.model_dump() for p in caps.programs if p.program in PROGRAMS}
    write(
        {
            "type": "probe",
            "kernel": platform.release(),
            "seconds": round(time.monotonic() - started, 1),
            "features": {f.value: ok for f, ok in caps.features.items()},
            "programs": support,
            "auto": {
                p: getattr(unavailable(get_program(p), AUTO, caps.features)[0], "kind", None)
                for p in PROGRAMS
            },
        }
    )
    pool = ChildPool(Zygote.spawn())
    try:
        for program in PROGRAMS:
            spec = get_program(program)
            auto, _ = unavailable(spec, AUTO, caps.features, caps.feature_errors)
            for option in spec.attach:
                if option != auto:
                    write(run_one(program, option.kind, caps, pool, tmp))
    finally:
        pool.close()
    write({"type": "end", "seconds": round(time.monotonic() - started, 1)})


if __name__ == "__main__":
    sys.exit(main())
