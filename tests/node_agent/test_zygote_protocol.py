"""The zygote's protocol, each side on its own: the worker's end (node_agent.zygote.Zygote)
against a socket this test answers on, and the zygote's answer to one request
(node_agent.zygote_process._fork).
The real zygote, forking real trace children, is tests/node_agent/test_zygote.py."""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from node_agent import zygote as zygote_module
from node_agent import zygote_process
from node_agent.zygote import Zygote, ZygoteGone

PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture
def answered() -> Iterator[tuple[Zygote, socket.socket, subprocess.Popen[bytes]]]:
    """The worker's end of a zygote whose socket this test holds; the zygote's process is a
    `sleep` of ours (what a retired zygote's kill hits), killed and reaped afterwards."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    process = subprocess.Popen(["sleep", "60"])
    zygote = Zygote(ours, process.pid, process)
    try:
        yield zygote, theirs, process
    finally:
        theirs.close()
        zygote.close()
        process.kill()
        process.wait(timeout=10)


def _wait(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _answer(theirs: socket.socket, reply: bytes) -> None:
    """Read one fork request, close its fds, send `reply` % its request number."""
    ready, _, _ = select.select([theirs], [], [], 10)
    assert ready, "no request came"
    message, fds, _, _ = socket.recv_fds(theirs, 64, 3)
    for fd in fds:
        os.close(fd)
    theirs.send(reply % int(message.split()[1]) if b"%d" in reply else reply)


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (b"fail %d 11", "Resource temporarily unavailable"),  # EAGAIN: pids.max
        (b"fail %d 12", "Cannot allocate memory"),
        (b"bad %d", "it could not read the request"),
    ],
    ids=["eagain", "enomem", "bad"],
)
def test_a_refused_fork_fails_at_once_and_the_zygote_serves_on(
    answered: tuple[Zygote, socket.socket, subprocess.Popen[bytes]], reply: bytes, why: str
) -> None:
    zygote, theirs, _ = answered
    threading.Thread(target=_answer, args=(theirs, reply), daemon=True).start()
    start = time.monotonic()
    with pytest.raises(ZygoteGone, match=f"did not fork: {why}"):
        zygote.start_child()
    assert time.monotonic() - start < zygote_module.REPLY_TIMEOUT_S / 2
    assert zygote.serving() and zygote._timeouts == 0 and not zygote._refused


def test_a_reply_this_side_cannot_read_marks_the_zygote_gone(
    answered: tuple[Zygote, socket.socket, subprocess.Popen[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The reader thread ending on an exception must not leave a zygote that looks alive
    (every request would then wait for answers nobody reads)."""
    zygote, theirs, _ = answered
    caplog.set_level(logging.ERROR, logger="node_agent.zygote")
    theirs.send(b"pid 1 not-a-pid")
    _wait(lambda: not zygote.alive())
    with pytest.raises(ZygoteGone):
        zygote.start_child()
    assert "cannot read" in caplog.text and "ValueError" in caplog.text


def test_a_request_left_unanswered_too_long_retires_the_zygote(
    answered: tuple[Zygote, socket.socket, subprocess.Popen[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not only requests in a row: one given up on and still unanswered RETIRE_AFTER_WAITS
    timeouts later retires it; a retired zygote with no children is killed."""
    zygote, _, process = answered
    monkeypatch.setattr(zygote_module, "REPLY_TIMEOUT_S", 0.2)
    with pytest.raises(ZygoteGone, match="did not answer in time"):
        zygote.start_child()
    assert zygote.serving()
    time.sleep(zygote_module.RETIRE_AFTER_WAITS * 0.2)
    with pytest.raises(ZygoteGone, match="did not answer in time"):
        zygote.start_child()  # the second timeout, with the first request 0.8 s old
    assert not zygote.serving()
    assert process.wait(timeout=10) == -signal.SIGKILL
    with pytest.raises(ZygoteGone, match="retired or gone"):
        zygote.start_child()
    assert len(zygote._abandoned) == 2


@pytest.mark.parametrize(
    ("message", "fds", "reply"),
    [
        (b"fork 7", 1, b"bad 7"),  # fds lost
        (b"fork 7 x", 3, b"bad 7"),
        (b"spoon 7", 3, b"bad 7"),
        (b"fork x", 3, None),  # no number to answer to: logged only
        (b"", 3, None),
    ],
)
def test_the_zygote_answers_a_request_it_cannot_read(
    message: bytes, fds: int, reply: bytes | None
) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        zygote_process._fork(theirs, message, [0] * fds, ())
        ours.setblocking(False)
        if reply is None:
            with pytest.raises(BlockingIOError):
                ours.recv(64)
        else:
            assert ours.recv(64) == reply


def _orphan(report: int, stdin: int) -> None:
    """In a subreaper: a zygote forks a child and dies before the child's guard is set."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    out, err = (os.open(os.devnull, os.O_WRONLY) for _ in range(2))
    zygote = os.fork()
    if zygote == 0:
        parent = os.getpid()
        if os.fork() == 0:
            deadline = time.monotonic() + 10
            while os.getppid() == parent and time.monotonic() < deadline:
                time.sleep(0.01)
            zygote_process._child_main([stdin, out, err], [], (), parent)
        os._exit(0)
    os.waitpid(zygote, 0)
    _, status = os.waitpid(-1, 0)  # the orphan, reparented to this subreaper
    os.write(report, b"%d" % os.waitstatus_to_exitcode(status))


def test_a_child_whose_zygote_died_before_its_guard_exits_untouched() -> None:
    """PR_SET_PDEATHSIG set after the parent died is never delivered: the child must see it
    was reparented and exit before reading its request, not run a trace nobody watches."""
    stdin_r, stdin_w = os.pipe()
    request = b'{"request": "not read"}\n'
    os.write(stdin_w, request)
    report_r, report_w = os.pipe()
    helper = os.fork()
    if helper == 0:
        try:
            _orphan(report_w, stdin_r)
        finally:
            os._exit(0)
    os.close(report_w)
    try:
        ready, _, _ = select.select([report_r], [], [], 30)
        assert ready, "the helper did not report"
        assert os.read(report_r, 16) == b"0"
        os.set_blocking(stdin_r, False)
        assert os.read(stdin_r, 64) == request  # still there: the child never read it
    finally:
        if os.waitpid(helper, os.WNOHANG) == (0, 0):
            os.kill(helper, signal.SIGKILL)
            os.waitpid(helper, 0)
        for fd in (stdin_r, stdin_w, report_r):
            os.close(fd)
