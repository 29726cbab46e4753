"""Booting a VM host in a test: QEMU is always stopped by its pid, whatever the test did."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from devstack import kernels, sshd, system
from devstack.config import HostSpec, StackConfig


@contextlib.contextmanager
def booted(argv: Sequence[str], pidfile: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start `argv` (from kernels.vng_command with `pidfile`); on leaving, stop its QEMU and
    everything vng left in its session, by pid."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        kernels.stop_qemu(pidfile, grace_s=5.0)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def run_in_vm(
    kernel: kernels.Kernel,
    modules: Path,
    command: str,
    workdir: Path,
    *,
    timeout_s: float,
    name: str = "ft-vm-test",
) -> int:
    """Boot, run `command` in the guest (`workdir` is writable there), return vng's status
    (255 even when the command succeeded: judge by what the command wrote)."""
    pidfile = workdir / "qemu.pid"
    argv = kernels.vng_command(
        kernel,
        modules=modules,
        name=name,
        exec_=command,
        memory_mb=1024,
        cpus=1,
        rwdirs={str(workdir): workdir},
        pidfile=pidfile,
    )
    with booted(argv, pidfile, workdir / "vng.log") as proc:
        return proc.wait(timeout=timeout_s)


def assert_nothing_left(config: StackConfig) -> None:
    """No QEMU, tap, Redis address or cgroup of this stack on the machine."""
    names = {spec.name.encode() for spec in config.vm_hosts}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            assert not (b"qemu-system" in argv[0] and names & set(argv)), argv
    for index in range(len(config.hosts)):
        assert not system.link_exists(config.link(index))
    lo = subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True)
    assert f" {config.redis_address}/32 " not in lo.stdout
    assert not system.cgroup_path(config.cgroup_parent).exists()


def ssh(config: StackConfig, host: HostSpec, command: str) -> subprocess.Popen[str]:
    """`command` in a VM host as root, over its sshd, with the stack's key and known_hosts."""
    address = config.addresses(config.hosts.index(host))[1]
    argv = [
        *("ssh", "-i", str(sshd.controller_key(config))),
        *("-o", f"UserKnownHostsFile={sshd.known_hosts(config)}", "-o", "BatchMode=yes"),
        *("-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=30"),
        f"root@{address}",
        command,
    ]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
