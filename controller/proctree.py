"""Child processes that never outlive their parent: PR_SET_PDEATHSIG on Linux, a watch anywhere."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, sig: signal.Signals = signal.SIGTERM) -> None:
    """Have the kernel send `sig` to this process when `parent` exits (and now, if it has)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    # The parent may have gone before prctl: then we were reparented already.
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def watch_parent(
    parent: int, *, grace_s: float, sig: signal.Signals = signal.SIGTERM, every_s: float = 1.0
) -> threading.Thread:
    """Backstop for die_with_parent: once `parent` is gone, `sig`; after `grace_s`, SIGKILL."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        log.warning("parent %d is gone: stopping (pid %d)", parent, os.getpid())
        os.kill(os.getpid(), sig)
        time.sleep(grace_s)
        log.error("still running %gs after the parent went: killing pid %d", grace_s, os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def stop_child(proc: subprocess.Popen[bytes], *, name: str, timeout_s: float) -> None:
    """SIGTERM, wait up to `timeout_s`, then SIGKILL; the child is reaped either way."""
    if proc.poll() is not None:
        return
    log.info("stopping %s (pid %d)", name, proc.pid)
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("%s (pid %d) still runs after %gs: killing it", name, proc.pid, timeout_s)
        proc.kill()
        proc.wait(timeout=10)


class KeptChild:
    """A child process kept running by its parent: started again (after RESTART_PAUSE_S)
    when it exits without being asked, stopped with stop_child() when the parent stops."""

    RESTART_PAUSE_S = 1.0

    def __init__(self, argv: list[str], *, name: str, stop_timeout_s: float) -> None:
        self.argv = argv
        self.name = name
        self.stop_timeout_s = stop_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watch: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            self.proc = subprocess.Popen(self.argv)
        log.info("started %s (pid %d)", self.name, self.proc.pid)
        self._watch = threading.Thread(target=self._keep, name=f"keep-{self.name}", daemon=True)
        self._watch.start()

    def _keep(self) -> None:
        while not self._stopping.wait(self.RESTART_PAUSE_S):
            with self._lock:
                if self._stopping.is_set() or self.proc is None or self.proc.poll() is None:
                    continue
                log.error(
                    "%s (pid %d) exited with %s: starting it again",
                    self.name,
                    self.proc.pid,
                    self.proc.returncode,
                )
                self.proc = subprocess.Popen(self.argv)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            if self.proc is not None:
                stop_child(self.proc, name=self.name, timeout_s=self.stop_timeout_s)
