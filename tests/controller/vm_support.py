"""Booting a VM host in a test: QEMU is always stopped by its pid, whatever the test did."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

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


def ssh_argv(config: StackConfig, host: HostSpec, command: str) -> list[str]:
    """ssh running `command` in a VM host as root, with the stack's key and known_hosts."""
    address = config.addresses(config.hosts.index(host))[1]
    return [
        *("ssh", "-i", str(sshd.controller_key(config))),
        *("-o", f"UserKnownHostsFile={sshd.known_hosts(config)}", "-o", "BatchMode=yes"),
        *("-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=30"),
        f"root@{address}",
        command,
    ]


def ssh(config: StackConfig, host: HostSpec, command: str) -> subprocess.Popen[str]:
    """`command` in a VM host as root, over its sshd, with the stack's key and known_hosts."""
    argv = ssh_argv(config, host, command)
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


class Remote:
    """`command` in a VM host over ssh, every wait on it bounded: on a timeout its ssh is
    killed by pid and reaped, and the error shows what it printed so far.

    Use it as a context manager: leaving kills a still running ssh and never hides the error
    the block raised."""

    def __init__(self, config: StackConfig, host: HostSpec, command: str) -> None:
        self.command = command
        self.proc = subprocess.Popen(
            ssh_argv(config, host, command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []  # every stdout line read so far, taken or not
        self.err: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def _read(self, stream: IO[str] | None, stdout: bool) -> None:
        assert stream is not None
        for line in stream:
            (self.out if stdout else self.err).append(line)
            if stdout:
                self._lines.put(line)
        if stdout:
            self._lines.put(None)

    def readline(self, timeout_s: float, what: str) -> str:
        """The next line of its stdout, within `timeout_s`."""
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise self._given_up(f"no {what} within {timeout_s:g} s (ssh killed)") from None
        if line is None:
            self._lines.put(None)  # at its end it stays there
            self.kill()  # reaped: its exit status is known for the message
            raise self._given_up(f"ssh ended (exit {self.proc.returncode}) before {what}")
        return line

    def write(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def finish(self, timeout_s: float, what: str) -> str:
        """Close its stdin and wait for a clean exit within `timeout_s`; all of its stdout."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise self._given_up(
                f"{what} still running after {timeout_s:g} s (ssh killed)"
            ) from None
        self._join_readers()
        assert code == 0, f"{what} failed (exit {code}): {self.said()}"
        return "".join(self.out)

    def _given_up(self, why: str) -> AssertionError:
        """The error for a wait given up on, its ssh killed and reaped first."""
        self.kill()
        return AssertionError(f"{why}: {self.said()}")

    def kill(self) -> None:
        """SIGKILL its ssh by pid if it still runs, and reap it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self._join_readers()

    def _join_readers(self, timeout_s: float = 5.0) -> None:
        """Its pipes end with it: the readers finish with what it printed last."""
        deadline = time.monotonic() + timeout_s
        for reader in self._readers:
            reader.join(timeout=max(0.0, deadline - time.monotonic()))

    def said(self) -> str:
        """The command and the end of what it printed, for an error."""
        out, err = "".join(self.out)[-2000:], "".join(self.err)[-2000:]
        return f"{self.command[:120]!r} printed {out!r}; ssh's stderr {err!r}"
