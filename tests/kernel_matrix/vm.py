"""Run the guest runner on a kernel: this host's directly, or a VM's booted with virtme-ng.

Every run is bounded by a timeout; a VM's QEMU is killed by the pid it wrote, and the
process group we started with it, whatever happens. What the guest wrote stays readable.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = "results.jsonl"
GUEST_LOG = "guest.log"
TAIL_CHARS = 3000
POLL_S = 0.2


@dataclass
class GuestRun:
    """What one kernel's runner wrote, and how long it took."""

    kernel: str
    records: list[dict[str, Any]] = field(default_factory=list)
    log_tail: str = ""
    boot_to_start_s: float | None = None  # launch to the runner's first line
    wall_s: float = 0.0
    timed_out: bool = False

    def programs(self) -> dict[str, dict[str, Any]]:
        return {r["program"]: r for r in self.records if r.get("type") == "program"}

    def one(self, kind: str) -> dict[str, Any] | None:
        return next((r for r in self.records if r.get("type") == kind), None)


def guest_command(
    share: Path, *, block_dev: str | None = None, python: str = sys.executable
) -> str:
    """The shell line a guest runs: the runner, its lines and its log into `share`."""
    disk = f" --block-dev {block_dev}" if block_dev else ""
    return (
        f"export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; cd {ROOT} && "
        f"exec {python} -m tests.kernel_matrix.guest --out {share / RESULTS}{disk}"
        f" > {share / GUEST_LOG} 2>&1"
    )


def _read(share: Path) -> tuple[list[dict[str, Any]], str]:
    records = []
    with contextlib.suppress(OSError):
        for line in (share / RESULTS).read_text().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
    try:
        tail = (share / GUEST_LOG).read_text(errors="replace")[-TAIL_CHARS:]
    except OSError:
        tail = "(the guest wrote no log)"
    return records, tail


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def _qemu_pid(pidfile: Path | None) -> int | None:
    if pidfile is None:
        return None
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def run_guest(
    kernel: str,
    argv: Sequence[str],
    share: Path,
    *,
    timeout_s: float,
    pidfile: Path | None = None,
) -> GuestRun:
    """Start `argv` (a VM boot, or the runner itself) and wait for it, at most `timeout_s`.

    `share` is where the runner writes; `pidfile` where QEMU writes its pid, killed at the
    end in any case, with the process group started here.
    """
    share.mkdir(parents=True, exist_ok=True)
    run = GuestRun(kernel)
    started = time.monotonic()
    with (share / "launcher.log").open("wb") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if run.boot_to_start_s is None and (share / RESULTS).exists():
                run.boot_to_start_s = round(now - started, 2)
            if now - started > timeout_s:
                run.timed_out = True
                break
            time.sleep(POLL_S)
    finally:
        qemu = _qemu_pid(pidfile)
        if qemu is not None:
            _kill(qemu)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    run.wall_s = round(time.monotonic() - started, 2)
    run.records, run.log_tail = _read(share)
    return run


def qemu_alive(pidfile: Path) -> bool:
    """Whether the QEMU that wrote `pidfile` still runs (a test asserts it does not)."""
    pid = _qemu_pid(pidfile)
    if pid is None:
        return False
    try:
        return "qemu" in Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return False
