"""The zygote process itself: it serves the worker's fork requests, each on the socket the
worker holds the other end of, forks each trace child and reaps it (the protocol:
node_agent.zygote, the worker's end). A trace child starts here, in `_child_main`.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import selectors
import signal
import socket
import sys
import traceback
from typing import NoReturn

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def preload() -> None:
    """What every trace child needs, bcc aside: imported once, shared by all of them."""
    import node_agent.child
    import node_agent.programs
    import node_agent.runtime.bcc_runtime
    import node_agent.runtime.sandbox
    import node_agent.trace

    node_agent.programs.catalog()


def _die_with_parent() -> None:
    """SIGKILL when the parent dies: nothing of an agent outlives it or runs unsupervised."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


def zygote_main(sock: socket.socket) -> NoReturn:
    """The zygote's life: serve fork requests until the worker closes its end."""
    code = 0
    try:
        parent = os.getppid()
        _die_with_parent()
        if os.getppid() != parent:
            os._exit(0)  # the worker died before the guard was set
        _close_inherited(keep=sock.fileno())
        gc.freeze()
        _serve(sock)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _close_inherited(keep: int) -> None:
    """Only stdio and the socket: no fd of the worker's reaches a trace child."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _serve(sock: socket.socket) -> None:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fileobj == wake_r:
                    os.read(wake_r, 512)
                    _reap_children(sock)
                    continue
                message, fds, _flags, _addr = socket.recv_fds(sock, 64, 3)
                if not message:
                    return  # the worker closed its end
                try:
                    _fork(sock, message, fds, (sock.fileno(), wake_r, wake_w))
                finally:
                    for fd in fds:
                        os.close(fd)


def _fork(sock: socket.socket, message: bytes, fds: list[int], own: tuple[int, ...]) -> None:
    """Answer one request: a child forked, or why not (the worker then spawns it cold)."""
    kind, *numbers = message.split() or [b""]
    wellformed = len(numbers) in (1, 2) and all(n.isdigit() for n in numbers)
    if kind != b"fork" or len(fds) != 3 or not wellformed:
        log.error("zygote: bad request %r with %d fds", message[:64], len(fds))
        if numbers and numbers[0].isdigit():
            sock.send(b"bad %s" % numbers[0])
        return
    request, *warm_mb = numbers
    argv = ["--warm", warm_mb[0].decode()] if warm_mb else []
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError as exc:  # pids.max, memory: this child is spawned cold, the others run on
        log.error("zygote: cannot fork request %s: %s", request.decode(), exc)
        sock.send(b"fail %s %d" % (request, exc.errno or 0))
        return
    if pid == 0:
        _child_main(fds, argv, own, parent)
    sock.send(b"pid %s %d" % (request, pid))


def _reap_children(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.send(b"exit %d %d" % (pid, os.waitstatus_to_exitcode(status)))


def _child_main(
    fds: list[int], argv: list[str], zygote_fds: tuple[int, ...], parent: int
) -> NoReturn:
    """A trace child, just forked: its own session and stdio, then child.main's protocol."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in zygote_fds:
            os.close(fd)
        os.setsid()  # its own process group: the runner kills the group
        _die_with_parent()
        if os.getppid() != parent:
            os._exit(0)  # the zygote died before the guard was set: no unsupervised trace
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own stdio
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        # The forking process's log handlers write to its files: dropped, not closed.
        logging.getLogger().handlers.clear()
        from node_agent.child import main

        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def main() -> int:
    """`python -m node_agent.zygote_process FD`: a replacement zygote on the inherited socket FD."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    sock = socket.socket(fileno=int(sys.argv[1]))
    preload()
    zygote_main(sock)


if __name__ == "__main__":
    sys.exit(main())
