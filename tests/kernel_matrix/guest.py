"""The kernel matrix's guest side: on whatever kernel it starts on (this host, or a VM),
probe the host, then run every catalog program through the agent's own runner on its
known-answer workload, and write one JSON line per program as it ends.

    python -m tests.kernel_matrix.guest --out results.jsonl [--block-dev /dev/vda]

Lines: {"type": "start"}, one {"type": "program"} per row of workloads.rows() (each catalog
program, and its costlier attach options forced; a program without a workload in
workloads.CASES fails), {"type": "probe"} with the capability report, and
{"type": "end"}. The host side (test_matrix.py) judges them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import IO, Any

from node_agent.programs import catalog, get_program
from node_agent.protocol import HostCapabilities, Limits, RunState, TraceRequest
from node_agent.runner import ChildPool
from node_agent.zygote import Zygote
from tests.helpers import TraceOutcome, run_trace
from tests.kernel_matrix.workloads import CASES, Context, Row, Setup, rows

log = logging.getLogger("kernel_matrix.guest")
PROBE = (sys.executable, "-m", "node_agent.cli", "probe", "--allow-custom", "--allow-bpftrace")
PROBE_TIMEOUT_S = 540.0  # 6.12 under emulation, beside the compiles, took over 300 s
DETAIL_CHARS = 600  # of a compiler or verifier log, in a failure's reason
GRACE_S = 30.0  # under emulation bpftrace takes over the default 5 s to print and detach
# Under emulation a compile takes 10-40 times as long: cpu_profile's came near the agent's
# 120 s bound beside another compile and the probe. Real hosts keep the agent's bound.
COMPILE_TIMEOUT_S = 300.0
DISK_WAIT_S = 20.0
WORKLOAD_BOUND_S = 600.0  # a trace ends when its workload is done; this bounds one that hangs


class Lines:
    """The JSON lines file, flushed line by line: a guest that hangs leaves what it did."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.out.write(json.dumps(record, default=str) + "\n")
            self.out.flush()


def _reason(outcome: TraceOutcome) -> str:
    error = outcome.final.error
    if error is None:
        return outcome.final.reason or outcome.final.state.value
    text = f"{error.code.value}: {error.message}"
    if error.detail:
        text += f" [{error.detail.strip()[-DETAIL_CHARS:]}]"
    return text


def _timings(outcome: TraceOutcome) -> dict[str, Any]:
    snaps = outcome.snapshots
    if not snaps:
        return {"compile_s": None, "attach_s": None, "attach": None}
    stats = snaps[-1].stats
    return {
        "compile_s": round(stats.compile_s, 3),
        "attach_s": round(stats.attach_s, 3),
        "attach": stats.attach,
    }


def _judged(
    row: Row, setup: Setup, pool: ChildPool, capabilities: HostCapabilities | None
) -> dict[str, Any]:
    # The trace ends when its workload is done (a stop: final snapshot, state cancelled), not
    # after a duration sized for a real machine: under emulation five fork+execs or
    # bpftrace's exit print can take longer than a real host's whole trace. The duration is
    # only the bound for a workload that never ends.
    fields = {**setup.fields, "duration_s": WORKLOAD_BOUND_S}
    if row.attach is not None:
        fields["params"] = {**fields.get("params", {}), "attach": row.attach}
    request = TraceRequest(
        run_id=f"matrix-{row.program}-{row.attach or 'auto'}",
        program=row.program,
        limits=Limits(overhead_pct=None),  # emulation would trip any real budget
        grace_s=GRACE_S,
        **fields,
    )
    outcome = run_trace(
        request,
        setup.release,
        end_when_done=True,
        allow_custom=True,
        allow_bpftrace=True,
        pool=pool,
        capabilities=capabilities,
        compile_timeout_s=COMPILE_TIMEOUT_S,
    )
    record: dict[str, Any] = {"state": outcome.final.state.value, **_timings(outcome)}
    if outcome.final.state is RunState.unsupported:
        return {**record, "status": "unsupported", "reason": _reason(outcome)}
    ended = outcome.final.state is RunState.cancelled and outcome.final.error is None
    if not (ended or outcome.final.state is RunState.succeeded):
        return {**record, "status": "failed", "reason": _reason(outcome)}
    try:
        verdict = setup.judge(outcome)
    except Exception as exc:  # a missing table or label is a wrong answer, said as such
        return {**record, "status": "failed", "reason": f"cannot read the answer: {exc!r}"}
    record.update(answer=verdict.answer, expected=verdict.expected)
    if verdict.ok:
        return {**record, "status": "ok", "reason": ""}
    return {**record, "status": "failed", "reason": "wrong answer"}


def run_program(
    row: Row, ctx: Context, pool: ChildPool, probed: Future[dict[str, Any]]
) -> dict[str, Any]:
    """One row's program on its workload, never raising: whatever goes wrong is its record.

    As the worker does, a program with attach options is given the probe's capabilities
    (it picks the option by them, or checks the forced one); the others start beside the
    probe."""
    started = time.monotonic()
    name = row.name
    record: dict[str, Any] = {"type": "program", "program": name, "kernel": platform.release()}
    make = CASES.get(row.program)
    if make is None:
        reason = "no known-answer workload for it in tests/kernel_matrix/workloads.py"
        return {**record, "status": "failed", "reason": reason}
    log.info("%s: starting", name)
    # Rows of one program run at once: each builds its helpers in a directory of its own.
    own = Context(tmp=ctx.tmp / name.replace(" ", "_"), block_dev=ctx.block_dev)
    own.tmp.mkdir()
    try:
        setup = make(own)
    except Exception as exc:
        return {**record, "status": "failed", "reason": f"workload setup failed: {exc!r}"}
    try:
        capabilities = _capabilities(probed) if get_program(row.program).attach else None
        record.update(_judged(row, setup, pool, capabilities))
    except Exception as exc:
        record.update(status="failed", reason=f"the runner raised {exc!r}")
    finally:
        setup.cleanup()
    record["wall_s"] = round(time.monotonic() - started, 2)
    log.info("%s: %s %s (%.1f s)", name, record["status"], record["reason"], record["wall_s"])
    return record


def _capabilities(probed: Future[dict[str, Any]]) -> HostCapabilities | None:
    report = probed.result().get("capabilities")
    return HostCapabilities.model_validate(report) if report else None


def probe() -> dict[str, Any]:
    """The agent's capability probe, run as the worker runs it (a child process)."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            PROBE, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return {"type": "probe", "error": f"no answer within {PROBE_TIMEOUT_S:g} s"}
    record: dict[str, Any] = {"type": "probe", "seconds": round(time.monotonic() - started, 2)}
    try:
        record["capabilities"] = json.loads(done.stdout)
    except ValueError:
        said = f"stdout {done.stdout[:DETAIL_CHARS]!r}, stderr {done.stderr[-DETAIL_CHARS:]!r}"
        record["error"] = f"exit {done.returncode}, no JSON report: {said}"
    return record


class LowWater:
    """The lowest MemAvailable seen, sampled every second in a thread until stop()."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.lowest_mb: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(every_s,), daemon=True)
        self._thread.start()

    def _sample(self, every_s: float) -> None:
        while True:
            with contextlib.suppress(OSError, StopIteration, ValueError):
                info = Path("/proc/meminfo").read_text().splitlines()
                line = next(x for x in info if x.startswith("MemAvailable:"))
                mb = int(line.split()[1]) // 1024
                if self.lowest_mb is None or mb < self.lowest_mb:
                    self.lowest_mb = mb
            if self._stop.wait(every_s):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.lowest_mb is not None:
            log.info("lowest available memory: %d MiB", self.lowest_mb)


def run(lines: Lines, ctx: Context, *, jobs: int, only: list[str] | None = None) -> None:
    started = time.monotonic()
    lines.write({"type": "start", "kernel": platform.release(), "time": time.time()})
    # Those waiting for the probe last: the others' compiles overlap it.
    chosen = sorted(
        (r for r in rows() if not only or r.program in only),
        key=lambda r: bool(catalog()[r.program].attach),
    )
    pool = ChildPool(Zygote.spawn())
    memory = LowWater()
    try:
        with ThreadPoolExecutor(max_workers=jobs + 1) as executor:
            probed = executor.submit(probe)  # beside the traces: it is the slowest part
            with ThreadPoolExecutor(max_workers=jobs) as traces:
                runs = [traces.submit(run_program, r, ctx, pool, probed) for r in chosen]
                for done in as_completed(runs):
                    lines.write(done.result())
            lines.write(probed.result())
    finally:
        pool.close()
        memory.stop()
    lines.write(
        {
            "type": "end",
            "seconds": round(time.monotonic() - started, 2),
            "mem_available_min_mb": memory.lowest_mb,
        }
    )


def wait_for_disk(path: Path) -> None:
    """A guest's virtio disk appears once its driver (a module on distro kernels) is loaded."""
    if not path.exists():
        subprocess.run(["modprobe", "-q", "virtio_blk"], check=False, timeout=60)
    deadline = time.monotonic() + DISK_WAIT_S
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON lines file to write")
    parser.add_argument("--block-dev", type=Path, help="a whole disk biolatency may overwrite")
    parser.add_argument("--jobs", type=int, default=2, help="traces at once")
    parser.add_argument("--only", action="append", help="only this program (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.block_dev is not None:
        wait_for_disk(args.block_dev)
    with tempfile.TemporaryDirectory(prefix="ft-matrix-") as tmp, args.out.open("a") as out:
        ctx = Context(tmp=Path(tmp), block_dev=args.block_dev)
        run(Lines(out), ctx, jobs=args.jobs, only=args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
