"""The bpftrace process: found on PATH, started with bounds, read line by line, stopped.

`bpftrace -v -f json FILE`, never --unsafe, in its own process group (our SIGINT only: not a
terminal's, not the runner's kill), SIGKILLed by the kernel if the trace process dies
(PR_SET_PDEATHSIG), with a small environment: the PATH and bpftrace's own bounds.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from node_agent.errors import UnsupportedProgram
from node_agent.protocol import Limits

log = logging.getLogger(__name__)

MAX_PROBES = 512  # attach points after wildcards (BPFTRACE_MAX_PROBES)
STRLEN = 64  # bytes per str() on the BPF stack (BPFTRACE_STRLEN, bpftrace's default)
LOG_SIZE = 256 * 1024  # verifier log bytes (BPFTRACE_LOG_SIZE)
STDERR_KEEP = 64 * 1024  # characters of bpftrace's stderr kept for the error
QUEUE_LINES = 10_000  # a full queue stalls bpftrace's writes: its own buffers then count losses
PR_SET_PDEATHSIG = 1
EOF = object()  # the last item of `lines`: stdout closed
TOO_LONG = object()  # an item of `lines`: a line above MAX_LINE, left out
MAX_LINE = 64 * 1024 * 1024  # characters of one stdout line (a whole map print), newline included


def find_bpftrace() -> str:
    path = shutil.which("bpftrace")
    if path is None:
        raise UnsupportedProgram("bpftrace is not installed: no bpftrace on PATH")
    return path


def bpftrace_env(limits: Limits) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "LANG": "C.UTF-8",
        "BPFTRACE_MAP_KEYS_MAX": str(limits.map_entries),
        "BPFTRACE_MAX_PROBES": str(MAX_PROBES),
        "BPFTRACE_MAX_BPF_PROGS": str(MAX_PROBES),
        "BPFTRACE_STRLEN": str(STRLEN),
        "BPFTRACE_LOG_SIZE": str(LOG_SIZE),
        "BPFTRACE_CAT_BYTES_MAX": "0",
    }


def _die_with_parent(parent: int) -> Callable[[], None]:
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork

    def setup() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl
            os._exit(1)

    return setup


def _read_lines(stream: IO[str], out: queue.Queue[object], max_line: int = MAX_LINE) -> None:
    """Each stdout line into out (a line above max_line: TOO_LONG instead), then EOF, always:
    the run loop waits for EOF, so a reader that died without it would hold the run."""
    try:
        while line := stream.readline(max_line + 1):
            if len(line) > max_line:
                while line and not line.endswith("\n"):  # the rest of it, never kept
                    line = stream.readline(max_line)
                out.put(TOO_LONG)
            else:
                out.put(line)
    except Exception:  # MemoryError included: logged, and EOF below ends the run's wait
        log.exception("bpftrace stdout could not be read")
    finally:
        out.put(EOF)


def _read_stderr(stream: IO[str], keep: list[str]) -> None:
    size = 0
    for line in stream:
        size += len(line)
        keep.append(line)
        while size > STDERR_KEEP and len(keep) > 1:
            size -= len(keep.pop(len(keep) // 2))  # keep the first errors and the last lines


class Bpftrace:
    """One running bpftrace: its stdout lines in a queue, its stderr kept (bounded)."""

    def __init__(self, binary: str, script: Path, limits: Limits) -> None:
        # Spawned from the main thread: PDEATHSIG follows the thread that forked.
        self.process = subprocess.Popen(
            [binary, "-v", "-f", "json", str(script)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=bpftrace_env(limits),
            text=True,
            errors="replace",
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()),  # prctl only: safe after fork
        )
        self.pid = self.process.pid
        self.lines: queue.Queue[object] = queue.Queue(maxsize=QUEUE_LINES)
        self._stderr: list[str] = []
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=_read_lines, args=(self.process.stdout, self.lines)),
            threading.Thread(target=_read_stderr, args=(self.process.stderr, self._stderr)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()
        self.killed = False

    def running(self) -> bool:
        return self.process.poll() is None

    def catches_sigint(self) -> bool:
        """Whether bpftrace still has its SIGINT handler (SigCgt in /proc/<pid>/status)."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return False
        caught = re.search(r"^SigCgt:\s*([0-9a-fA-F]+)$", status, re.MULTILINE)
        return caught is not None and bool(int(caught.group(1), 16) >> (signal.SIGINT - 1) & 1)

    def interrupt(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGINT)

    def kill(self) -> None:
        self.killed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def reap(self) -> int:
        """Wait for the exit (killing it if it still runs: nothing outlives the trace)."""
        if self.running():
            self.kill()
        code = self.process.wait()
        for reader in self._readers:
            reader.join(timeout=1)
        return code

    def stderr(self) -> str:
        return "".join(self._stderr)
