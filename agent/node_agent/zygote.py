"""The zygote: a small process that forks every trace child after the imports.

The worker forks it first thing, before Celery, the outbox or the heartbeat start a thread,
so that what the worker imported (interpreter, pydantic, the protocol, the catalog) is shared
copy-on-write by the worker, the zygote and each trace child instead of being loaded again.
bcc (libbcc, LLVM, clang: ~55 MB once loaded) is loaded by each trace child, or by the
one warm child runner.ChildPool keeps while the agent is busy: never by an idle agent.

Worker -> zygote, on a SOCK_SEQPACKET socket pair: b"fork ID" (or b"fork ID MB": a warm
child, `node_agent.child --warm MB`) carrying the child's stdin, stdout and stderr fds; the
child then is node_agent.child (which applies the request's memory limit before bcc loads).
Zygote -> worker: b"pid ID PID" once forked, then b"exit PID RETURNCODE" once reaped
(RETURNCODE as subprocess gives it: -N for signal N); b"fail ID ERRNO" when fork() failed
(pids.max, memory) and b"bad ID" for a request it cannot read: that child is spawned cold.
ID is the worker's number for the request: a reply that comes after the worker gave up
waiting belongs to no later request (that child reads the end of its stdin and exits).
A zygote that dies takes its children with it (they die with their parent, SIGKILL), and
the worker replaces it with a fresh `python -m node_agent.zygote_process FD` (no pages shared).
One that stops answering (stopped, wedged) is retired: it gets no more requests, a fresh
one is started, and it is killed once the children it forked are gone. A child's exit it
leaves unreported is read from the zombie's /proc (node_agent.zygote.unreaped_exit).
The zygote process's own side (serving, forking, each child's start) is
node_agent.zygote_process; this module is the worker's.
"""

from __future__ import annotations

import array
import contextlib
import gc
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

from node_agent.zygote_process import preload, zygote_main

log = logging.getLogger(__name__)

REPLY_TIMEOUT_S = 10.0
# A zygote is retired after this many requests in a row not answered in time, or once a
# request given up on has waited this many REPLY_TIMEOUT_S for its answer.
RETIRE_AFTER_TIMEOUTS = 3
RETIRE_AFTER_WAITS = 3
# The zygote reaps a child the moment it exits. One left a zombie this long (a stopped or
# wedged zygote) has its exit code read from /proc instead, and one reaped with no "exit"
# sent is reported LOST: a trace never waits on a zygote that stopped talking.
UNREPORTED_EXIT_S = 10.0
# The returncode the worker reports for a child whose zygote died before reaping it: its
# children are sent SIGKILL when it dies (PR_SET_PDEATHSIG).
LOST = -signal.SIGKILL


class ZygoteGone(Exception):
    """The zygote is dead or does not answer: no child was forked."""


class ForkedProcess:
    """A trace child forked by the zygote: the part of a Popen the runner uses."""

    def __init__(self, pid: int, stdin: IO[str], stdout: IO[str], zygote: Zygote) -> None:
        self.pid = pid
        self.stdin: IO[str] | None = stdin
        self.stdout: IO[str] | None = stdout
        self.returncode: int | None = None
        self._zygote = zygote

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote.returncode(self.pid, block=False)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = self._zygote.returncode(self.pid, block=True)
        assert self.returncode is not None
        for stream in (self.stdin, self.stdout):
            with contextlib.suppress(OSError, ValueError):
                assert stream is not None
                stream.close()
        return self.returncode


class Zygote:
    """The worker's end: asks for children, learns their pids and how they ended."""

    def __init__(self, sock: socket.socket, pid: int, process: subprocess.Popen[bytes] | None):
        self.pid = pid
        self._sock = sock
        self._process = process  # None: forked, reaped with waitpid
        self._lock = threading.Lock()  # one fork request at a time
        self._cond = threading.Condition()
        self._requests = itertools.count(1)
        self._pids: dict[int, int] = {}  # request id -> the pid forked for it
        self._refused: dict[int, str] = {}  # request id -> why no child was forked for it
        self._abandoned: dict[int, float] = {}  # request ids given up on -> when sent
        self._strays: set[int] = set()  # pids forked for those: their exits are nobody's
        self._children: set[int] = set()  # pids forked and not reaped yet
        self._exits: dict[int, int] = {}
        self._timeouts = 0  # requests in a row not answered in time
        self._alive = True
        self._retired = False
        self._closing = False
        threading.Thread(target=self._read, name="zygote", daemon=True).start()

    @classmethod
    def fork(cls) -> Zygote:
        """Fork the zygote from this process: call it before this process starts a thread."""
        preload()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        gc.freeze()  # the collector of either side then leaves the shared objects' pages alone
        pid = os.fork()
        if pid == 0:
            parent.close()
            zygote_main(child)
        child.close()
        return cls(parent, pid, None)

    @classmethod
    def spawn(cls) -> Zygote:
        """A fresh zygote, for when this process has threads: it shares no pages with it."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        process = subprocess.Popen(
            [sys.executable, "-m", "node_agent.zygote_process", str(child.fileno())],
            pass_fds=(child.fileno(),),
            stdin=subprocess.DEVNULL,
        )
        child.close()
        return cls(parent, process.pid, process)

    def alive(self) -> bool:
        with self._cond:
            return self._alive

    def serving(self) -> bool:
        """Alive and not retired: it may be asked for children."""
        with self._cond:
            return self._alive and not self._retired

    def start_child(self, warm_mb: int | None = None) -> tuple[ForkedProcess, IO[bytes]]:
        """A new trace child, and the file its stderr goes to; with `warm_mb`, one that
        loads bcc now under a memory limit of that many MiB (node_agent.child --warm)."""
        request = next(self._requests)
        message = b"fork %d" % request if warm_mb is None else b"fork %d %d" % (request, warm_mb)
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - closed by the runner
        try:
            # Bounded: behind a request that waits for a silent zygote, this one gives up too.
            if not self._lock.acquire(timeout=REPLY_TIMEOUT_S):
                raise ZygoteGone(
                    f"the zygote is still busy with an earlier request (pid {self.pid})"
                )
            try:
                pid = self._request(request, message, [stdin_r, stdout_w, stderr.fileno()])
            finally:
                self._lock.release()
        except BaseException:
            for fd in (stdin_w, stdout_r):
                os.close(fd)
            stderr.close()
            raise
        finally:
            os.close(stdin_r)
            os.close(stdout_w)
        stdin = os.fdopen(stdin_w, "w")
        stdout = os.fdopen(stdout_r, "r")
        return ForkedProcess(pid, stdin, stdout, self), stderr

    def _request(self, request: int, message: bytes, fds: list[int]) -> int:
        """Send one fork request and wait for its answer (under self._lock)."""
        if not self.serving():
            raise ZygoteGone(f"the zygote (pid {self.pid}) is retired or gone")
        sent = time.monotonic()
        try:
            # Not blocking: the socket of a zygote that reads nothing fills up. (sendmsg, as
            # socket.send_fds ignores its flags argument: CPython 3.11 does.)
            rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))
            self._sock.sendmsg([message], [rights], socket.MSG_DONTWAIT)
        except BlockingIOError as exc:
            self._timed_out()
            raise ZygoteGone("the zygote did not answer in time (its socket is full)") from exc
        except OSError as exc:
            self._died()
            raise ZygoteGone(f"cannot reach the zygote: {exc}") from exc
        return self._next_pid(request, sent)

    def _next_pid(self, request: int, sent: float) -> int:
        with self._cond:
            answered = self._cond.wait_for(
                lambda: request in self._pids or request in self._refused or not self._alive,
                REPLY_TIMEOUT_S,
            )
            if answered and self._alive:
                self._timeouts = 0
            if request in self._pids:
                return self._pids.pop(request)
            if request in self._refused:
                raise ZygoteGone(f"the zygote did not fork: {self._refused.pop(request)}")
            if answered:
                raise ZygoteGone("the zygote died")
            # Its child, if it is forked yet, finds its stdin closed and exits by itself.
            self._abandoned[request] = sent
        self._timed_out()
        raise ZygoteGone("the zygote did not answer in time")

    def _timed_out(self) -> None:
        """One more request not answered in time: retired if it is too many, or too long."""
        with self._cond:
            self._timeouts += 1
            why = self._why_retire()
        if why is not None:
            self._retire(why)

    def _why_retire(self) -> str | None:
        """Why this zygote should get no more requests, if it should (under self._cond)."""
        if self._retired or not self._alive:
            return None
        if self._timeouts >= RETIRE_AFTER_TIMEOUTS:
            return f"{self._timeouts} requests in a row not answered in {REPLY_TIMEOUT_S:g}s"
        if self._abandoned:
            waited = time.monotonic() - min(self._abandoned.values())
            if waited > RETIRE_AFTER_WAITS * REPLY_TIMEOUT_S:
                return f"a request given up on is still unanswered after {waited:.0f}s"
        return None

    def _retire(self, why: str) -> None:
        """No more requests for it; it is closed once the children it forked are gone."""
        with self._cond:
            self._retired = True
            children = len(self._children)
        log.warning(
            "the zygote (pid %d) is retired: %s; a new one serves the next requests, this one "
            "is closed once its %d children have exited",
            self.pid,
            why,
            children,
        )
        if not children:
            self.close()

    def returncode(self, pid: int, *, block: bool) -> int | None:
        with self._cond:
            if block:
                code = self._wait_exit(pid)
                if code is not None:
                    return code
            if pid in self._exits:
                return self._exits.pop(pid)
            # Its zygote died first: the child got SIGKILL with it, its status went with it.
            return None if self._alive else LOST

    def _wait_exit(self, pid: int) -> int | None:
        """Wait (under self._cond) for the zygote to report `pid`'s exit; its code if the
        zygote failed to within UNREPORTED_EXIT_S of the exit, else None (reported)."""
        silent_since: float | None = None
        while not self._cond.wait_for(
            lambda: pid in self._exits or not self._alive, timeout=UNREPORTED_EXIT_S / 10
        ):
            code = unreaped_exit(pid, self.pid)
            if code == RUNNING:
                silent_since = None
                continue
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since < UNREPORTED_EXIT_S:
                continue
            # Its "exit" may still come: it is nobody's then.
            self._strays.add(pid)
            self._children.discard(pid)
            done = self._retired and not self._children
            log.warning(
                "the zygote (pid %d) did not report child %d's exit in %gs: %s",
                self.pid,
                pid,
                UNREPORTED_EXIT_S,
                "read from /proc" if code is not None else "reaped, its code lost",
            )
            self._timed_out()  # self._cond is reentrant: retiring takes it again
            if done:
                self.close()
            return LOST if code is None else code
        return None

    def _read(self) -> None:
        try:
            while True:
                try:
                    message = self._sock.recv(64)
                except OSError:
                    message = b""
                if not message:
                    break
                kind, *fields = message.split()
                with self._cond:
                    if kind == b"pid":
                        self._forked(int(fields[0]), int(fields[1]))
                    elif kind == b"exit":
                        self._exited(int(fields[0]), int(fields[1]))
                    elif kind in (b"fail", b"bad"):
                        self._refuse(int(fields[0]), fields[1:])
                    self._cond.notify_all()
                    done = self._retired and not self._children and not self._closing
                if done:
                    log.info("the retired zygote (pid %d) has no children left", self.pid)
                    self.close()
        except Exception:
            log.exception("the zygote (pid %d) sent what this side cannot read", self.pid)
        finally:
            self._died()

    def _forked(self, request: int, pid: int) -> None:
        self._children.add(pid)
        if self._abandoned.pop(request, None) is not None:
            self._strays.add(pid)
            log.info("the zygote forked pid %d after its request was given up; it exits", pid)
        else:
            self._pids[request] = pid

    def _refuse(self, request: int, errno: list[bytes]) -> None:
        why = os.strerror(int(errno[0])) if errno else "it could not read the request"
        log.warning(
            "the zygote (pid %d) forked no child for request %d: %s", self.pid, request, why
        )
        if self._abandoned.pop(request, None) is None:
            self._refused[request] = why

    def _exited(self, pid: int, code: int) -> None:
        self._children.discard(pid)
        if pid in self._strays:
            self._strays.discard(pid)
        else:
            self._exits[pid] = code

    def _died(self) -> None:
        with self._cond:
            if not self._alive:
                return
            self._alive = False
            self._cond.notify_all()
        if not self._closing:
            log.warning("the zygote (pid %d) is gone", self.pid)
        self._sock.close()
        self._reap()

    def _reap(self) -> None:
        if self._process is not None:
            self._process.wait()
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)

    def close(self) -> None:
        """The zygote exits when its socket closes (its children then die with it); a
        retired one, which may never read it, is killed."""
        self._closing = True
        with self._cond:  # killed first: once its socket is shut, the reader may reap it
            if self._retired and self._alive:  # not reaped yet: the pid is still its own
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)


RUNNING = 1 << 16  # not an exit status: unreaped_exit's "still running"


def unreaped_exit(pid: int, parent: int) -> int | None:
    """`pid`, a child of `parent`: RUNNING while it runs; its exit code (-N for signal N) if
    it has exited and `parent` has not reaped it (a zombie's /proc/PID/stat keeps its wait
    status, field 52); None if it is reaped (gone, or its pid is another process's)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # from field 3, state; the name may hold ")"
    if int(fields[1]) != parent:
        return None
    if fields[0] != "Z":
        return RUNNING
    return os.waitstatus_to_exitcode(int(fields[52 - 3]))
