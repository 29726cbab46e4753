"""A local host's workload: copied into the host's private /opt and run there (stdlib only).

usage: workload.py MODE ALIVE_FILE
Every process exits within about half a second once ALIVE_FILE is gone (the stack stopped).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

CHECK_EVERY_S = 0.5
MODES = {
    "web-moderate": "getppid() in bursts of 500, sleeping 10 ms between",
    "web-heavy": "getppid() flat out and two CPU burners, all on one CPU",
    "db-io": "append 4 KiB, fsync, read back, 50 times a second",
}


class Alive:
    """Cheap to call in a hot loop: looks at the file at most every CHECK_EVERY_S."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.checked = 0.0
        self.alive = True

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.checked >= CHECK_EVERY_S:
            self.checked = now
            self.alive = os.path.exists(self.path)
        return self.alive


def syscall_loop(alive: Alive, batch: int, pause_s: float) -> None:
    """`batch` getppid() calls, then a pause: a service answering requests."""
    while alive():
        for _ in range(batch):
            os.getppid()
        if pause_s:
            time.sleep(pause_s)


def burner(alive: Alive) -> None:
    """Mostly on the CPU, short sleeps: it keeps its neighbours waiting in the run queue."""
    while alive():
        until = time.monotonic() + 0.04
        n = 0
        while time.monotonic() < until:
            n += 1
        time.sleep(0.01)


def file_io(alive: Alive, data_dir: str) -> None:
    """A small database: append, fsync, reopen and read back, a few times a second."""
    os.makedirs(data_dir, exist_ok=True)
    block = os.urandom(4096)
    n = 0
    while alive():
        path = os.path.join(data_dir, f"segment-{n % 8}.dat")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, block)
            os.fsync(fd)
        finally:
            os.close(fd)
        if os.path.getsize(path) > 1 << 20:
            os.truncate(path, 0)
        with open(path, "rb") as f:
            f.read(4096)
        n += 1
        time.sleep(0.02)


def run_all(targets: list[Callable[[], None]]) -> None:
    """One process per target (fork), so they compete for the CPU like separate services."""
    children = []
    for target in targets[1:]:
        pid = os.fork()
        if pid == 0:
            target()
            os._exit(0)
        children.append(pid)
    targets[0]()
    for pid in children:
        os.waitpid(pid, 0)


def pin_to_one_cpu() -> None:
    """A busy host on one CPU only: its run queue gets long, the machine's other CPUs stay free."""
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write(__doc__ or "")
        return 2
    mode, alive = argv[1], Alive(argv[2])
    here = os.path.dirname(os.path.abspath(__file__))
    if mode == "web-moderate":
        syscall_loop(alive, batch=500, pause_s=0.01)
    elif mode == "web-heavy":
        pin_to_one_cpu()
        run_all(
            [
                lambda: syscall_loop(alive, batch=5000, pause_s=0.0),
                lambda: burner(alive),
                lambda: burner(alive),
            ]
        )
    elif mode == "db-io":
        file_io(alive, os.path.join(here, "data"))
    else:
        sys.stderr.write(f"unknown workload {mode!r}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
