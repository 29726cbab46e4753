"""Known-answer workloads for every catalog program, one case per program.

Each case starts its processes waiting (their start-up is not traced), names the request
that traces them, releases them once the program is attached (the trace ends when the
release returns, that is when the work is done), and judges the answer: exact counts where
the kernel makes them exact. They reuse the workloads of the per-program tests
(tests/node_agent/programs/), smaller, as a guest under emulation is slow.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from node_agent.protocol import MapDecl, MapKind, Scope, Snapshot
from tests.helpers import TraceOutcome, compile_c, go, row_value, spawn_waiting
from tests.node_agent.programs import known_workloads as known
from tests.node_agent.programs.test_cpu_profile import BUSY, HELPER_C
from tests.node_agent.programs.test_custom import COUNTER_C
from tests.node_agent.programs.test_tcp_retransmits import CLIENT_PORT, SERVER_PORT, SYN_DROP

N = 2000  # getppid calls
K = 20  # opens of an existing file
J = 5  # opens of a missing file
M = 5  # execs of a uniquely named binary
SLEEPS = 50  # 1 ms sleeps
WRITES = 40  # O_DIRECT block writes
BLOCK = 4096
MIN_BUSY_SHARE = 0.8

GETPPIDS = f"import os\nfor _ in range({N}): os.getppid()\n"


@dataclass
class Verdict:
    ok: bool
    answer: Any
    expected: Any


@dataclass
class Setup:
    """One program's trace: what to ask for, what to release once attached, how to judge."""

    fields: dict[str, Any]  # TraceRequest fields beyond program, run_id and duration_s
    release: Callable[[], None]  # starts the work and returns when it is done
    judge: Callable[[TraceOutcome], Verdict]
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    finalizers: list[Callable[[], None]] = field(default_factory=list)

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        for finalizer in self.finalizers:
            finalizer()


@dataclass
class Context:
    tmp: Path
    block_dev: Path | None  # a whole disk the runner may overwrite, for biolatency


Case = Callable[[Context], Setup]
CASES: dict[str, Case] = {}


@dataclass(frozen=True)
class Row:
    """One line of the matrix: a program as `auto` attaches it, or with one option forced."""

    program: str
    attach: str | None = None  # forced attach option

    @property
    def name(self) -> str:
        return self.program if self.attach is None else f"{self.program} attach={self.attach}"


def rows() -> list[Row]:
    """Every catalog program, and each of its attach options but the cheapest forced: `auto`
    takes the cheapest wherever the host has it, so this runs every option somewhere."""
    from node_agent.programs import catalog

    found = []
    for name, spec in sorted(catalog().items()):
        found.append(Row(name))
        found += [Row(name, option.kind) for option in spec.attach[1:]]
    return found


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[name] = fn
        return fn

    return register


def waiting(script: str, *args: str) -> subprocess.Popen[str]:
    """`python -c script args...` that first waits for a line on its stdin."""
    return spawn_waiting(f"import sys; sys.stdin.readline()\n{script}", *args)


def released(*procs: subprocess.Popen[str]) -> Callable[[], None]:
    return lambda: go(list(procs), succeed=True)


def exact(answer: Any, expected: Any) -> Verdict:
    return Verdict(answer == expected, answer, expected)


def go_and_read(proc: subprocess.Popen[str]) -> str:
    """Tell a waiting process to start, and return the line it says when its work is done
    (it stays alive after: a trace ending with its work must not see it exit)."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return proc.stdout.readline()


def scoped(proc: subprocess.Popen[str], judge: Callable[[TraceOutcome], Verdict]) -> Setup:
    """A trace of one waiting process, scoped to its pid."""
    return Setup({"scope": Scope(pid=proc.pid)}, released(proc), judge, [proc])


@case("syscalls")
def syscalls(ctx: Context) -> Setup:
    child = waiting(GETPPIDS)

    def judge(outcome: TraceOutcome) -> Verdict:
        table = outcome.table("syscalls")
        others = {keys[1] for keys, _ in table.rows} - {child.pid}
        answer = {"getppid": row_value(table, syscall="getppid", pid=child.pid)}
        return exact({**answer, "other pids": len(others)}, {"getppid": N, "other pids": 0})

    return scoped(child, judge)


@case("syscall_latency")
def syscall_latency(ctx: Context) -> Setup:
    child = waiting(f"import time\nfor _ in range({SLEEPS}): time.sleep(0.001)\n{GETPPIDS}")

    def judge(outcome: TraceOutcome) -> Verdict:
        totals = {str(h.labels["syscall"]): h.total for h in outcome.histograms()}
        answer = {name: totals.get(name, 0) for name in ("clock_nanosleep", "getppid")}
        return exact(answer, {"clock_nanosleep": SLEEPS, "getppid": N})

    return scoped(child, judge)


@case("opens")
def opens(ctx: Context) -> Setup:
    path, missing = ctx.tmp / "ft-matrix-opened", ctx.tmp / "ft-matrix-missing"
    path.write_text("x")
    script = (
        f"for _ in range({K}): open(sys.argv[1]).close()\n"
        f"for _ in range({J}):\n"
        "    try: open(sys.argv[2])\n"
        "    except FileNotFoundError: pass\n"
    )
    child = waiting(script, str(path), str(missing))

    def judge(outcome: TraceOutcome) -> Verdict:
        table = outcome.table("opens")
        names = [f.name for f in table.key_fields]
        got: dict[str, list[int]] = {}
        for keys, values in table.rows:
            row = dict(zip(names, keys, strict=True))
            if row.get("pid") == child.pid:
                got[str(row["path"])] = list(values)
        answer = {p.name: got.get(str(p)) for p in (path, missing)}
        return exact(answer, {path.name: [K, 0], missing.name: [J, J]})

    return scoped(child, judge)


@case("execs")
def execs(ctx: Context) -> Setup:
    binary = ctx.tmp / f"ftmx{os.getpid()}"
    shutil.copy(shutil.which("true") or "/bin/true", binary)
    script = f"import subprocess\nfor _ in range({M}): subprocess.run([sys.argv[1]], check=True)\n"
    child = waiting(script, str(binary))

    def judge(outcome: TraceOutcome) -> Verdict:
        return exact(row_value(outcome.table("execs"), comm=binary.name), M)

    fields = {"scope": Scope(comm=binary.name), "params": {"samples": False}}
    return Setup(fields, released(child), judge, [child])


@case("runqlat")
def runqlat(ctx: Context) -> Setup:
    # Every run-queue wait follows a switch out (a sleep, or a preemption), so the known
    # answer is the workload's own count of context switches (getrusage) from just before it
    # blocks on stdin, across its naps. Under emulation preemptions are many and unknowable
    # in advance; the kernel's counter says how many there were. Real-time, so fewer of them.
    script = (
        "import os, resource, sys, time\n"
        "os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))\n"
        "def switches():\n"
        "    r = resource.getrusage(resource.RUSAGE_SELF)\n"
        "    return r.ru_nvcsw + r.ru_nivcsw\n"
        "before = switches()\n"
        "sys.stdin.readline()\n"
        f"for _ in range({SLEEPS}): time.sleep(0.001)\n"
        "print(switches() - before, flush=True)\n"
        # Alive until the trace has ended: an exit would be traced too, and under emulation
        # its page faults over 9p block it a dozen times more (6.1 counted 65 for 51).
        "sys.stdin.readline()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    said: dict[str, int] = {}

    def release() -> None:
        said["switches"] = int(go_and_read(child))

    def judge(outcome: TraceOutcome) -> Verdict:
        total = sum(h.total for h in outcome.histograms())
        switches = said.get("switches")
        if switches is None:
            return Verdict(False, total, "the workload did not say its context switches")
        # A wait per switch out; up to two more between its count and the trace's end.
        return Verdict(
            switches <= total <= switches + 2 and switches >= SLEEPS // 2,
            total,
            f"{switches}..{switches + 2} (its context switches)",
        )

    return Setup({"scope": Scope(pid=child.pid)}, release, judge, [child])


def loop_device(backing: Path, size: int) -> Path:
    """A loop device over a new file, for a host that was given no disk of its own."""
    with backing.open("wb") as f:
        f.truncate(size)
    done = subprocess.run(
        ["losetup", "--find", "--show", "--direct-io=on", str(backing)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return Path(done.stdout.strip())


@case("biolatency")
def biolatency(ctx: Context) -> Setup:
    finalizers: list[Callable[[], None]] = []
    device = ctx.block_dev
    if device is None:
        device = loop_device(ctx.tmp / "ft-matrix-disk.img", WRITES * BLOCK * 4)
        loop = str(device)
        finalizers.append(lambda: subprocess.run(["losetup", "-d", loop], check=False, timeout=30))
    # Each aligned O_DIRECT write to the raw disk is one request, issued by the writer.
    script = (
        "import mmap, os\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_DIRECT)\n"
        f"buf = mmap.mmap(-1, {BLOCK})\n"
        f"buf.write(b'f' * {BLOCK})\n"
        f"for i in range({WRITES}): assert os.pwritev(fd, [buf], i * {BLOCK}) == {BLOCK}\n"
    )
    writer = waiting(script, str(device))
    disk = Path(os.path.realpath(device)).name

    def judge(outcome: TraceOutcome) -> Verdict:
        totals = {str(h.labels.get("disk")): h.total for h in outcome.histograms()}
        # Only our disk's count is known; the others are said for the diagnosis.
        return Verdict(totals.get(disk) == WRITES, totals, {disk: WRITES})

    # Not scoped: on some kernels the writer's requests are issued from a kernel worker (the
    # scope_note), and the disk is the runner's alone, so its count is the writer's.
    return Setup({}, released(writer), judge, [writer], finalizers)


# tests/node_agent/programs/test_cpu_profile.py's helper exits when its spin ends, but the
# trace now ends when the work is done, and stacks are symbolized then: the process must
# still be there. This one says it is done, then waits for its stdin to close.
_SPIN_END = "return (int)(total & 1);"
assert _SPIN_END in HELPER_C, "test_cpu_profile.HELPER_C changed: adapt BUSY_THEN_WAIT_C"
BUSY_THEN_WAIT_C = HELPER_C.replace(
    _SPIN_END,
    'printf("done %lu\\n", total & 1);\n    fflush(stdout);\n'
    "    while (fgets(line, sizeof line, stdin)) {}\n    return 0;",
)


@case("cpu_profile")
def cpu_profile(ctx: Context) -> Setup:
    helper = compile_c(BUSY_THEN_WAIT_C, ctx.tmp / "ft_busy")  # spins in BUSY for 3 s
    proc = subprocess.Popen([str(helper)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def release() -> None:
        said = go_and_read(proc)
        assert said.startswith("done"), f"the busy helper said {said!r}"

    def judge(outcome: TraceOutcome) -> Verdict:
        stacks = outcome.stacks().stacks
        total = sum(s.count for s in stacks)
        top = max(stacks, key=lambda s: s.count).frames[-1] if stacks else None
        busy = sum(s.count for s in stacks if s.frames and s.frames[-1].startswith(BUSY))
        share = round(busy / total, 2) if total else 0.0
        answer = {"top": top, "samples": total, "busy share": share}
        ok = top is not None and top.startswith(BUSY) and share >= MIN_BUSY_SHARE
        return Verdict(ok, answer, {"top": BUSY, "busy share": f">= {MIN_BUSY_SHARE}"})

    fields = {"scope": Scope(pid=proc.pid), "params": {"frequency": 99, "kernel": False}}
    return Setup(fields, release, judge, [proc])


@case("tcp_retransmits")
def tcp_retransmits(ctx: Context) -> Setup:
    # A full accept queue drops the SYN (tests/node_agent/programs/test_tcp_retransmits.py),
    # in a network namespace of its own whose RetransSegs counter is then the answer.
    script = (
        "import sys; sys.stdin.readline()\n"
        f"{SYN_DROP}\n"
        "print(''.join(l for l in open('/proc/net/snmp') if l.startswith('Tcp:')), end='')\n"
    )
    argv = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" -c "$1" 4']
    proc = subprocess.Popen(
        [*argv, sys.executable, script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    seen: dict[str, int] = {}

    def release() -> None:
        out, _ = proc.communicate("go\n", timeout=60)
        names, values = (line.split() for line in out.splitlines()[-2:])
        seen["RetransSegs"] = int(values[names.index("RetransSegs")])

    def judge(outcome: TraceOutcome) -> Verdict:
        table = outcome.table("retransmits")
        mine = {"saddr": "127.0.0.1", "sport": CLIENT_PORT, "daddr": "127.0.0.1"}
        answer = row_value(table, **mine, dport=SERVER_PORT, state="SYN_SENT")
        expected = seen.get("RetransSegs", "the workload did not finish")
        return Verdict(answer == expected and answer >= 1, answer, expected)

    return Setup({"params": {"port": SERVER_PORT}}, release, judge, [proc])


@case("custom")
def custom(ctx: Context) -> Setup:
    child = waiting(GETPPIDS)

    def judge(outcome: TraceOutcome) -> Verdict:
        return exact(outcome.table("by_tgid").rows, [([child.pid], [N])])

    setup = scoped(child, judge)
    maps = [MapDecl(name=n, kind=MapKind.counter) for n in ("calls", "by_tgid")]
    setup.fields.update(source=COUNTER_C, maps=maps)
    return setup


@case("bpftrace")
def bpftrace(ctx: Context) -> Setup:
    child = waiting(GETPPIDS)

    def judge(outcome: TraceOutcome) -> Verdict:
        return exact(row_value(outcome.table("@"), key0=child.pid), N)

    setup = scoped(child, judge)
    setup.fields["params"] = {
        "script": "tracepoint:syscalls:sys_enter_getppid { @[pid] = count(); }"
    }
    return setup


# -- the programs with attach options: lane b's known workloads and checks -----------------

_NETNS = itertools.count()  # rows of one program run at once: each its own namespace
CONNECT_PORT = 47301
CONNECTS = 5
NAPS = 50
FILE_READS, FILE_WRITES = 200, 100


def _known(
    stack: ExitStack,
    workload: known.Workload,
    check: Callable[[Snapshot], list[str]],
) -> Setup:
    """A tests/node_agent/programs/known_workloads workload, scoped to its pid."""

    def judge(outcome: TraceOutcome) -> Verdict:
        problems = check(outcome.last)
        return Verdict(not problems, problems or "as the workload made it", [])

    fields = {"scope": Scope(pid=workload.pid)}

    def release() -> None:
        workload.go()

    return Setup(fields, release, judge, [], [stack.close])


@case("tcpconnlat")
def tcpconnlat(ctx: Context) -> Setup:
    with ExitStack() as stack:  # closed here only if the workload does not start
        ns = stack.enter_context(known.netns(f"ft-matrix-{os.getpid()}-{next(_NETNS)}"))
        w = stack.enter_context(known.started(known.connects_argv(ns, CONNECT_PORT, CONNECTS)))
        stack.callback(w.end)
        check = partial(known.check_connects, pid=w.pid, comm=w.comm, port=CONNECT_PORT, n=CONNECTS)
        return _known(stack.pop_all(), w, check)


@case("offcputime")
def offcputime(ctx: Context) -> Setup:
    with ExitStack() as stack:
        w = stack.enter_context(known.started([str(known.naps_binary(ctx.tmp)), str(NAPS)]))
        stack.callback(w.end)
        return _known(stack.pop_all(), w, partial(known.check_naps, comm=w.comm, n=NAPS))


@case("vfs_latency")
def vfs_latency(ctx: Context) -> Setup:
    mount = ctx.tmp / "vfs-tmpfs"
    mount.mkdir(exist_ok=True)
    with ExitStack() as stack:
        argv = known.file_io_argv(mount, FILE_READS, FILE_WRITES)
        w = stack.enter_context(known.started(argv))
        stack.callback(w.end)
        check = partial(known.check_file_io, reads=FILE_READS, writes=FILE_WRITES)
        return _known(stack.pop_all(), w, check)
