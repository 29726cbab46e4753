"""Trace children forked by the zygote, for real: exact counts, their own memory limit, a
zygote that dies (the trace still runs, cold, and a new zygote takes over), and one that is
only slow to answer (one cold child; its late answer is nobody's pid)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.protocol import ErrorCode, Limits, RunEvent, RunState, Scope, TraceRequest
from node_agent.runner import ChildPool, TraceRunner
from node_agent.zygote import Zygote, ZygoteGone
from tests.helpers import is_running, row_value, snapshots_of

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
    """A zygote without bcc loaded, as the worker's is (this test process has loaded it)."""
    with _pool(Zygote.spawn()) as pair:
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
    assert zygote._exits == {} and zygote._pids == {}


def test_a_slow_zygote_gives_one_cold_child_and_keeps_serving(
    spawned: tuple[ChildPool, Zygote], monkeypatch: pytest.MonkeyPatch
) -> None:
    pool, zygote = spawned
    monkeypatch.setattr("node_agent.zygote.REPLY_TIMEOUT_S", 0.5)
    with _stopped(zygote.pid):
        cold = Traced(pool, "while-slow")
        assert cold.run() == CALLS
    assert cold.parent == os.getpid()  # spawned cold, not forked
    # Not replaced: a second zygote would run beside this one for the agent's life.
    assert pool._zygote is zygote and zygote.alive()
    again = Traced(pool, "after-slow")
    assert again.run() == CALLS
    assert again.parent == zygote.pid
    pid = again.runner.child_pid
    assert pid is not None and pid not in zygote._strays
