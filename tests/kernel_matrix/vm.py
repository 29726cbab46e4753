"""Run the guest runner on a kernel: this host's directly, or a VM's booted with virtme-ng.

Every run is bounded by a timeout; a VM's QEMU is stopped by the pid it wrote, and the
session started with it killed, whatever happens (tests/controller/vm_support.booted).
What the runner wrote stays readable, a hung one's last output included.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack import kernels
from tests.controller.vm_support import booted

ROOT = Path(__file__).resolve().parents[2]
RESULTS = "results.jsonl"
GUEST_LOG = "guest.log"
CONSOLE_LOG = "vng.log"  # vng's own output and the guest kernel's console
KERNEL_LOG = "dmesg.log"  # a VM kernel's warnings and errors, once the runner has ended
TAIL_CHARS = 3000
POLL_S = 0.2
GUEST_DISK = "/dev/vda"  # the one virtio disk a guest is given, for biolatency
DISK_BYTES = 4 << 20
# Two compiles at once (tcpconnlat's fentry and kprobe rows include net/sock.h), the probe's,
# the zygote and a warm child: 2 GiB ran out in CI (a trace child and once the runner itself
# died without a word). The end line says how low the guest's available memory went.
GUEST_MEMORY_MB = 3072
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class GuestRun:
    """What one kernel's runner wrote, and how long it took."""

    kernel: str  # the column's name: "host", "6.1", ...
    records: list[dict[str, Any]] = field(default_factory=list)
    log_tail: str = ""
    console_tail: str = ""  # a VM's kernel warnings (an OOM kill) and vng's own output
    boot_to_start_s: float | None = None  # launch to the runner's first line
    wall_s: float = 0.0
    timed_out: bool = False
    timeout_s: float = 0.0
    launcher_pid: int | None = None  # what was started: a VM's vng session, or the runner

    def programs(self) -> dict[str, dict[str, Any]]:
        return {r["program"]: r for r in self.records if r.get("type") == "program"}

    def one(self, kind: str) -> dict[str, Any] | None:
        return next((r for r in self.records if r.get("type") == kind), None)

    def capabilities(self) -> dict[str, Any]:
        probe = self.one("probe") or {}
        caps: dict[str, Any] = probe.get("capabilities") or {}
        return caps

    def release(self) -> str | None:
        start = self.one("start")
        return str(start["kernel"]) if start else None


def guest_command(
    share: Path, *, block_dev: str | None = None, vm: bool = False, only: Sequence[str] = ()
) -> str:
    """The shell line that runs the runner (on the programs `only` names, if any), its lines
    and its log into `share`; in a VM, then the kernel's warnings and errors (an OOM kill, a
    hung task: virtme sends the console itself nowhere)."""
    disk = f" --block-dev {block_dev}" if block_dev else ""
    chosen = "".join(f" --only {shlex.quote(name)}" for name in only)
    run = (
        f"{shlex.quote(sys.executable)} -m tests.kernel_matrix.guest"
        f" --out {share / RESULTS}{disk}{chosen} > {share / GUEST_LOG} 2>&1"
    )
    after = f"; dmesg --level=emerg,alert,crit,err,warn > {share / KERNEL_LOG} 2>&1" if vm else ""
    start = f"export PATH={SYSTEM_PATH}; cd {shlex.quote(str(ROOT))} && "
    return start + (f"{run}{after}" if vm else f"exec {run}")


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-TAIL_CHARS:]
    except OSError:
        return ""


def _collect(run: GuestRun, share: Path) -> GuestRun:
    with contextlib.suppress(OSError):
        for line in (share / RESULTS).read_text().splitlines():
            with contextlib.suppress(ValueError):
                run.records.append(json.loads(line))
    run.log_tail = _tail(share / GUEST_LOG) or "(the runner wrote no log)"
    run.console_tail = _tail(share / KERNEL_LOG) + _tail(share / CONSOLE_LOG)
    return run


def _wait(proc: subprocess.Popen[bytes], run: GuestRun, share: Path, started: float) -> None:
    """Until `proc` exits or the timeout passes; notes when the runner's first line appears."""
    while proc.poll() is None:
        now = time.monotonic()
        if run.boot_to_start_s is None and (share / RESULTS).exists():
            run.boot_to_start_s = round(now - started, 2)
        if now - started > run.timeout_s:
            run.timed_out = True
            return
        time.sleep(POLL_S)


def run_on_host(share: Path, *, timeout_s: float) -> GuestRun:
    """The runner on this machine's own kernel, as a bounded child process group."""
    share.mkdir(parents=True, exist_ok=True)
    run = GuestRun("host", timeout_s=timeout_s)
    started = time.monotonic()
    proc = subprocess.Popen(
        ["sh", "-c", guest_command(share)], stdin=subprocess.DEVNULL, start_new_session=True
    )
    run.launcher_pid = proc.pid
    try:
        _wait(proc, run, share, started)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    run.wall_s = round(time.monotonic() - started, 2)
    return _collect(run, share)


def overlays() -> list[str]:
    """Guest paths to overlay, writable in the guest only (Python's caches). Landlock rules
    hold on 9p too since the sandbox keeps its roots open (tests/node_agent/test_sandbox_vm.py);
    before, these overlays were what let the custom program's sandbox read the checkout."""
    paths = [ROOT]
    cache = kernels.cache_dir()
    if not cache.resolve().is_relative_to(ROOT):
        paths.append(cache.resolve())
    return [str(p) for p in paths]


def run_in_vm(
    kernel: kernels.Kernel,
    modules: Path,
    share: Path,
    *,
    timeout_s: float,
    name: str,
    command: str | None = None,
    only: Sequence[str] = (),
) -> GuestRun:
    """Boot `kernel` with `modules` as its /lib/modules and one blank virtio disk, run the
    runner (on `only` those programs, if given; or `command`) in it; at most `timeout_s`
    from launch, QEMU stopped in any case."""
    share.mkdir(parents=True, exist_ok=True)
    disk = share / "disk.img"
    with disk.open("wb") as f:
        f.truncate(DISK_BYTES)
    pidfile = share / "qemu.pid"
    argv = kernels.vng_command(
        kernel,
        modules=modules,
        name=name,
        exec_=command or guest_command(share, block_dev=GUEST_DISK, vm=True, only=only),
        memory_mb=GUEST_MEMORY_MB,
        console=True,
        rwdirs={str(share): share},
        overlays=overlays(),
        qemu_opts=("-drive", f"file={disk},format=raw,if=virtio"),
        pidfile=pidfile,
    )
    run = GuestRun(kernel.version, timeout_s=timeout_s)
    started = time.monotonic()
    with booted(argv, pidfile, share / CONSOLE_LOG) as proc:
        run.launcher_pid = proc.pid
        _wait(proc, run, share, started)
    run.wall_s = round(time.monotonic() - started, 2)
    return _collect(run, share)
