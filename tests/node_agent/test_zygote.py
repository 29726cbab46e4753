"""Trace children forked by the zygote, for real: exact counts, their own memory limit, a
zygote that dies (the trace still runs, cold, and a new zygote takes over), one that is
only slow to answer (one cold child; its late answer is nobody's pid), one that never
answers (retired, replaced, nothing waits on it), one stopped while its child exits (the
exit is still known, the trace ends), and one whose fork fails (pids.max)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node_agent import runner
from node_agent.protocol import ErrorCode, Limits, RunEvent, RunState, Scope, TraceRequest
from node_agent.runner import Child, ChildPool, TraceRunner
from node_agent.scope import cgroup2_mount
from node_agent.zygote import RETIRE_AFTER_TIMEOUTS, Zygote, ZygoteGone
from tests.helpers import cgroup_name, is_running, row_value, snapshots_of

pytestmark = pytest.mark.bcc

CALLS = 500


def _ppid(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1])


def _address_limit(pid: int) -> str:
    line = next(x for x in Path(f"/proc/{pid}/limits").read_text().splitlines() if "address" in x)
    return line.split()[3]  # "Max address space  SOFT HARD units"


class Traced:
    """One syscalls trace of this process through `pool`: CALLS getppid once attached."""

    def __init__(self, pool: ChildPool, run_id: str, limits: Limits | None = None) -> None:
        self.request = TraceRequest(
            run_id=run_id,
            program="syscalls",
            duration_s=1,
            scope=Scope(pid=os.getpid()),
            limits=limits or Limits(),
        )
        self.events: list[RunEvent] = []
        self.parent: int | None = None
        self.limit: str | None = None
        self.runner = TraceRunner(self.request, self._on_event, pool=pool)

    def _on_event(self, event: RunEvent) -> None:
        self.events.append(event)
        if is_running(event):
            pid = self.runner.child_pid
            assert pid is not None
            self.parent, self.limit = _ppid(pid), _address_limit(pid)
            for _ in range(CALLS):
                os.getppid()

    def run(self) -> int:
        """The trace's getppid count for this process (it must succeed)."""
        final = self.runner.run()
        assert final.state is RunState.succeeded, final
        table = next(r for r in snapshots_of(self.events)[-1].results if r.kind == "counter_table")
        count = row_value(table, syscall="getppid", pid=os.getpid())
        assert isinstance(count, int)
        return count


@contextlib.contextmanager
def _pool(zygote: Zygote) -> Iterator[tuple[ChildPool, Zygote]]:
    pool = ChildPool(zygote)
    try:
        yield pool, zygote
    finally:
        pool.close()


@pytest.fixture
def forked() -> Iterator[tuple[ChildPool, Zygote]]:
    """A zygote forked from this process, as the worker forks it."""
    with _pool(Zygote.fork()) as pair:
        yield pair


@pytest.fixture
def spawned() -> Iterator[tuple[ChildPool, Zygote]]:
    """A zygote without bcc loaded, as the worker's is (this test process has loaded it),
    ready: it has answered once (a fresh one imports for seconds on a loaded machine, longer
    than the short reply timeouts some tests set)."""
    with _pool(Zygote.spawn()) as pair:
        process, stderr = pair[1].start_child()
        assert process.stdin is not None
        process.stdin.close()  # it reads no request and exits 0
        assert process.wait() == 0
        stderr.close()
        yield pair


def test_a_forked_child_counts_exactly_and_is_the_zygotes_child(
    forked: tuple[ChildPool, Zygote],
) -> None:
    pool, zygote = forked
    assert _ppid(zygote.pid) == os.getpid()
    traced = Traced(pool, "forked")
    assert traced.run() == CALLS
    assert traced.parent == zygote.pid  # a descendant of this process, through the zygote
    assert traced.limit == str(Limits().memory_mb * 1024 * 1024)
    again = Traced(pool, "forked-again")
    assert again.run() == CALLS
    assert again.runner.child_pid != traced.runner.child_pid


def test_each_child_gets_its_own_requests_memory_limit(
    spawned: tuple[ChildPool, Zygote],
) -> None:
    pool, zygote = spawned
    traced = Traced(pool, "bigger", Limits(memory_mb=4096))
    assert traced.run() == CALLS
    assert traced.parent == zygote.pid
    assert traced.limit == str(4096 * 1024 * 1024)
    # Too small a limit fails that trace alone; the zygote goes on forking the next.
    small = TraceRequest(
        run_id="oom", program="syscalls", duration_s=1, limits=Limits(memory_mb=256)
    )
    final = TraceRunner(small, lambda e: None, pool=pool).run()
    assert final.state is RunState.failed
    assert final.error is not None and final.error.code is ErrorCode.limit_exceeded
    assert zygote.alive()
    assert Traced(pool, "after-oom").run() == CALLS


def _wait(condition: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_dead_zygote_is_replaced_and_traces_still_run(forked: tuple[ChildPool, Zygote]) -> None:
    pool, zygote = forked
    # A trace in flight when its zygote dies dies with it, and says so.
    long = TraceRequest(run_id="orphan", program="syscalls", duration_s=60)
    attached = threading.Event()
    runner = TraceRunner(long, lambda e: attached.set() if is_running(e) else None, pool=pool)
    threading.Thread(
        target=lambda: attached.wait(60) and os.kill(zygote.pid, signal.SIGKILL), daemon=True
    ).start()
    final = runner.run()
    assert attached.is_set()
    assert final.state is RunState.failed
    assert final.error is not None and "SIGKILL" in final.error.message
    _wait(lambda: not zygote.alive())
    # The next trace runs at once in a cold child, while a new zygote starts beside.
    cold = Traced(pool, "cold")
    assert cold.run() == CALLS
    assert cold.parent == os.getpid()
    _wait(lambda: pool._zygote is not zygote and pool._zygote is not None)
    new = pool._zygote
    assert new is not None
    _wait(new.alive)
    again = Traced(pool, "new-zygote")
    assert again.run() == CALLS
    assert again.parent == new.pid and _ppid(new.pid) == os.getpid()


def test_a_busy_pool_keeps_one_warm_child_then_lets_it_go() -> None:
    with _pool(Zygote.spawn()) as (pool, zygote):
        pool.keep_warm_s = 20.0  # from the last take: longer than these traces take here
        assert Traced(pool, "first").run() == CALLS
        _wait(lambda: pool._spare is not None)
        spare = pool._spare
        assert spare is not None
        # It loads bcc ahead, under the default memory limit.
        maps = Path(f"/proc/{spare.process.pid}/maps")
        _wait(lambda: "libLLVM" in maps.read_text())
        assert _address_limit(spare.process.pid) == str(Limits().memory_mb * 1024 * 1024)
        warm = Traced(pool, "warm")
        assert warm.run() == CALLS
        assert warm.runner.child_pid == spare.process.pid and warm.parent == zygote.pid
        # Another memory limit is not served by the warm child (its limit is the default).
        other = Traced(pool, "other-limit", Limits(memory_mb=4096))
        assert other.run() == CALLS
        assert other.limit == str(4096 * 1024 * 1024)
        _wait(lambda: pool._spare is not None)
        last = pool._spare
        assert last is not None
        # No trace for keep_warm_s: the warm child (bcc and all) is gone.
        _wait(lambda: pool._spare is None, timeout_s=60)
        _wait(lambda: last.process.poll() is not None)
        assert zygote.alive()


def _pipe_of(fd: int) -> str:
    return f"pipe:[{os.fstat(fd).st_ino}]"


def _open_files(pid: int) -> set[str]:
    """What a process's fds point at (the child writes its events on a copy of fd 1)."""
    try:
        return {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
    except FileNotFoundError:  # gone (or one fd closed while listing: asked again)
        return set()


@contextlib.contextmanager
def _stopped(pid: int) -> Iterator[None]:
    """The process frozen (SIGSTOP) as a loaded host's scheduler may leave it, then resumed."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_late_answer_from_a_slow_zygote_is_nobodys_pid(
    spawned: tuple[ChildPool, Zygote], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fork the worker gave up on is answered later: that pid must not become the next
    child's, whose stop, kill and exit code would then all be another process's."""
    _, zygote = spawned
    monkeypatch.setattr("node_agent.zygote.REPLY_TIMEOUT_S", 0.5)
    with _stopped(zygote.pid), pytest.raises(ZygoteGone, match="did not answer in time"):
        zygote.start_child()
    # Resumed, the zygote answers the request given up on before it reads this one.
    process, stderr = zygote.start_child()
    try:
        # The pid given is the process reading the pipes this side holds (the stray's are
        # closed: it has read the end of its stdin and exited, or is about to).
        assert process.stdout is not None and process.stdin is not None
        ours = {_pipe_of(process.stdin.fileno()), _pipe_of(process.stdout.fileno())}
        _wait(lambda: ours <= _open_files(process.pid), timeout_s=10)
    finally:
        assert process.stdin is not None
        process.stdin.close()  # it reads no request and exits 0
        assert process.wait() == 0
        stderr.close()
    # The stray exited by itself; its exit is kept for nobody.
    _wait(lambda: not zygote._strays)
    assert not zygote._abandoned and zygote._exits == {} and zygote._pids == {}


def test_a_slow_zygote_gives_one_cold_child_and_keeps_serving(
    spawned: tuple[ChildPool, Zygote],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool, zygote = spawned
    monkeypatch.setattr("node_agent.zygote.REPLY_TIMEOUT_S", 0.5)
    caplog.set_level(logging.INFO, logger="node_agent.zygote")
    with _stopped(zygote.pid):
        cold = Traced(pool, "while-slow")
        assert cold.run() == CALLS
    assert cold.parent == os.getpid()  # spawned cold, not forked
    # Not replaced: one late answer does not retire it.
    assert pool._zygote is zygote and zygote.alive()
    again = Traced(pool, "after-slow")
    assert again.run() == CALLS
    assert again.parent == zygote.pid
    # The request given up on was answered late, by a child of its own that exited by itself:
    # that pid went to nobody, and not to the trace after it.
    _wait(lambda: not zygote._abandoned and not zygote._strays)
    strays = [r.args[0] for r in caplog.records if "after its request was given up" in r.msg]
    assert len(strays) == 1, caplog.text
    assert strays[0] != again.runner.child_pid


def _request(run_id: str) -> TraceRequest:
    return TraceRequest(run_id=run_id, program="syscalls", duration_s=1)


def _timed_take(pool: ChildPool, run_id: str, took: list[float]) -> None:
    """One take (its child let go at once), and how long it took."""
    start = time.monotonic()
    child = pool.take(_request(run_id))
    took.append(time.monotonic() - start)
    child.discard()


def test_a_zygote_that_never_answers_is_retired_and_a_new_one_serves(
    spawned: tuple[ChildPool, Zygote], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped for good (or wedged), the zygote is not waited on forever: every take gives
    up in bounded time, even behind another; after RETIRE_AFTER_TIMEOUTS silent requests it
    gets no more, a new zygote forks the next trace, the old one (no children) is killed,
    and the pool closes."""
    pool, zygote = spawned
    monkeypatch.setattr("node_agent.zygote.REPLY_TIMEOUT_S", 0.5)
    assert zygote._process is not None
    os.kill(zygote.pid, signal.SIGSTOP)
    try:
        took: list[float] = []
        # At once: each waits at most 0.5 s for the one before it, then 0.5 s for its answer.
        takes = [
            threading.Thread(target=_timed_take, args=(pool, f"together-{n}", took))
            for n in range(6)
        ]
        for thread in takes:
            thread.start()
        for thread in takes:
            thread.join(timeout=20)
        assert not any(thread.is_alive() for thread in takes)
        # One by one, until a new zygote takes its place (each spawned cold till then).
        for n in range(RETIRE_AFTER_TIMEOUTS + 20):
            if pool._zygote is not zygote:
                break
            _timed_take(pool, f"one-by-one-{n}", took)
        assert max(took) < 2.0, took
        assert pool._zygote is not zygote and pool._zygote is not None
        # The old one had no children: it is killed.
        assert zygote._process.wait(timeout=10) == -signal.SIGKILL
        new = pool._zygote
        assert new.alive()
        # The new zygote may still be importing: it gets the usual time to answer.
        monkeypatch.setattr("node_agent.zygote.REPLY_TIMEOUT_S", 10.0)
        after = Traced(pool, "after-retirement")
        assert after.run() == CALLS
        assert after.parent == new.pid and _ppid(new.pid) == os.getpid()
        closing = threading.Thread(target=pool.close)
        closing.start()
        closing.join(timeout=20)
        assert not closing.is_alive()
        assert new._process is not None and new._process.wait(timeout=10) is not None
    finally:
        if zygote._process.returncode is None:
            zygote._process.kill()  # stopped or not, it goes


def test_a_full_socket_fails_the_request_instead_of_blocking(
    spawned: tuple[ChildPool, Zygote], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests pile up in the socket of a zygote that reads nothing: once it is full, a
    request fails at once (as slow) rather than blocking its sender, and the lock, for good.
    Retirement is put off here so that requests keep going to it."""
    _, zygote = spawned
    monkeypatch.setattr("node_agent.zygote.REPLY_TIMEOUT_S", 0.05)
    monkeypatch.setattr("node_agent.zygote.RETIRE_AFTER_TIMEOUTS", 10_000)
    monkeypatch.setattr("node_agent.zygote.RETIRE_AFTER_WAITS", 10_000)
    zygote._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # the kernel's least
    assert zygote._process is not None
    errors: list[str] = []

    def ask() -> None:
        for _ in range(200):
            try:
                zygote.start_child()
            except ZygoteGone as exc:
                errors.append(str(exc))
                if "socket is full" in str(exc):
                    return

    os.kill(zygote.pid, signal.SIGSTOP)
    try:
        asking = threading.Thread(target=ask, daemon=True)
        asking.start()
        asking.join(timeout=30)
        assert not asking.is_alive(), "a request blocked on the full socket"
        assert "socket is full" in errors[-1]
        assert zygote.alive() and zygote._lock.acquire(timeout=1)
        zygote._lock.release()
    finally:
        zygote._process.kill()  # it is given up here: the fixture's close then finds it gone


def _pids_hierarchy() -> Path | None:
    """Where a pids cgroup can be made: cgroup v2 if its root hands out the pids controller,
    else the cgroup v1 pids hierarchy."""
    root = cgroup2_mount()
    if root is not None and "pids" in (root / "cgroup.subtree_control").read_text().split():
        return root
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, where, kind, options, *_ = line.split()
        if kind == "cgroup" and "pids" in options.split(","):
            return Path(where)
    return None


@pytest.fixture
def pids_group() -> Iterator[Path]:
    """A pids cgroup of its own, emptied and removed afterwards."""
    root = _pids_hierarchy()
    if root is None:
        pytest.skip("no pids cgroup controller")
    path = root / cgroup_name("zygote-pids")
    path.mkdir()
    try:
        yield path
    finally:
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (root / "cgroup.procs").write_text(pid)
        path.rmdir()


def test_a_fork_refused_by_pids_max_is_spawned_cold_and_the_zygote_stays(
    spawned: tuple[ChildPool, Zygote], pids_group: Path
) -> None:
    """fork() failing in the zygote (EAGAIN at pids.max) fails that request at once; the
    zygote, and with it every trace it forked, goes on."""
    pool, zygote = spawned
    (pids_group / "cgroup.procs").write_text(str(zygote.pid))
    (pids_group / "pids.max").write_text((pids_group / "pids.current").read_text())
    start = time.monotonic()
    with pytest.raises(ZygoteGone, match="did not fork: Resource temporarily unavailable"):
        zygote.start_child()
    assert time.monotonic() - start < 5  # answered: not the 10 s of a silent zygote
    cold = Traced(pool, "no-pids-left")
    assert cold.run() == CALLS
    assert cold.parent == os.getpid()  # spawned cold
    assert pool._zygote is zygote and zygote.serving()
    (pids_group / "pids.max").write_text("max")
    again = Traced(pool, "pids-again")
    assert again.run() == CALLS
    assert again.parent == zygote.pid


def _discard(child: Child) -> None:
    child.discard()


def _deadline_kill(child: Child) -> None:
    runner._kill(child.process)  # what TraceRunner does past a deadline
    child.process.wait()
    child.stderr.close()


@pytest.mark.parametrize("kill", [_discard, _deadline_kill], ids=["discard", "deadline-kill"])
def test_an_exited_childs_pid_is_not_killed_again(
    spawned: tuple[ChildPool, Zygote], kill: Callable[[Child], None]
) -> None:
    """The zygote reaps its children at once: once it said a child exited, that pid may be
    any process's, and its group is not killed."""
    _, zygote = spawned
    process, stderr = zygote.start_child()
    assert process.stdin is not None
    process.stdin.close()  # it reads no request and exits 0
    _wait(lambda: process.poll() is not None, timeout_s=10)
    # A process group of ours stands for the process that got the pid next.
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        process.pid = other.pid
        kill(Child(process, stderr))
        with pytest.raises(subprocess.TimeoutExpired):
            other.wait(timeout=1)
    finally:
        other.kill()
        other.wait(timeout=10)


def _imported(stderr: bytes) -> set[str]:
    """The modules `python -X importtime` says it imported."""
    lines = stderr.decode(errors="replace").splitlines()
    return {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}


@pytest.mark.parametrize(
    ("stdin", "loads_bcc"), [(b"", False), (b"\n", True)], ids=["closed-empty", "line-then-closed"]
)
def test_a_warm_child_given_up_on_exits_without_loading_bcc(stdin: bytes, loads_bcc: bool) -> None:
    """A warm child whose request was given up on (its stdin closed before it ran) has
    nothing to warm for: it exits before bcc and LLVM load. One with a line to read warms."""
    read, write = os.pipe()
    os.write(write, stdin)
    os.close(write)  # closed before the child starts: no race with its first look
    try:
        argv = [sys.executable, "-X", "importtime", "-m", "node_agent.child", "--warm", "2048"]
        done = subprocess.run(argv, stdin=read, capture_output=True, timeout=120, check=False)
    finally:
        os.close(read)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("bcc" in _imported(done.stderr)) is loads_bcc


@pytest.mark.parametrize(("signum", "code"), [(None, 0), (signal.SIGKILL, -signal.SIGKILL)])
def test_a_childs_exit_is_known_while_its_zygote_is_stopped(
    spawned: tuple[ChildPool, Zygote],
    monkeypatch: pytest.MonkeyPatch,
    signum: int | None,
    code: int,
) -> None:
    """A stopped (or wedged) zygote reaps nothing and reports nothing: the exit is read from
    the zombie's /proc, within UNREPORTED_EXIT_S, and the late report, once it comes, is
    nobody's."""
    monkeypatch.setattr("node_agent.zygote.UNREPORTED_EXIT_S", 1.0)
    _, zygote = spawned
    process, stderr = zygote.start_child()
    assert process.stdin is not None
    try:
        with _stopped(zygote.pid):
            if signum is None:
                process.stdin.close()  # it reads no request and exits 0
            else:
                os.kill(process.pid, signum)
            waited = threading.Thread(target=process.wait, daemon=True)
            waited.start()
            waited.join(timeout=30)
            assert not waited.is_alive(), "wait() hung on a stopped zygote"
            assert process.returncode == code
            # Still its zombie: it was not reaped behind the zygote's back.
            assert Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        _wait(lambda: not zygote._strays, timeout_s=10)  # resumed, it reaped and told
        assert zygote._exits == {} and zygote.serving()
    finally:
        stderr.close()


def test_a_trace_ends_when_its_zygote_stops_mid_trace(
    spawned: tuple[ChildPool, Zygote], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child counts, ends and exits; its zygote, frozen meanwhile, reports nothing. The
    trace still ends, succeeded, with the exact count."""
    monkeypatch.setattr("node_agent.zygote.UNREPORTED_EXIT_S", 1.0)
    pool, zygote = spawned
    traced = Traced(pool, "zygote-stopped")
    original = traced._on_event

    def stop_the_zygote_once_attached(event: RunEvent) -> None:
        if is_running(event):
            os.kill(zygote.pid, signal.SIGSTOP)
        original(event)

    traced.runner.on_event = stop_the_zygote_once_attached
    try:
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(traced.run()), daemon=True)
        thread.start()
        thread.join(timeout=120)
        assert not thread.is_alive(), "the trace waited on a stopped zygote"
        assert result == [CALLS]
        assert traced.parent == zygote.pid
    finally:
        os.kill(zygote.pid, signal.SIGCONT)
