"""Local hosts with real sshd for the SSH and bootstrap tests: the stack, sshd's log, a sink.

Each test module gets its own names (netns, links, cgroups, subnet), so it never touches a
developer's `fleettrace dev up` stack nor another module's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.bootstrap.ssh import SshTarget, Timeouts
from devstack import HostSpec, Stack, StackConfig, down, sshd
from devstack.config import private_config
from devstack.system import make_netns, remove_netns

# A web host and a database host, each with its workload.
WEB_AND_DB = (
    HostSpec("web-1", {"role": "web"}, "web-moderate"),
    HostSpec("db-1", {"role": "db"}, "db-io"),
)


def stack_config(
    state_dir: Path, hosts: tuple[HostSpec, ...], kind: str, subnet: int, **fields: Any
) -> StackConfig:
    """This module's own names (see private_config); agents heartbeat every second. `fields`:
    more of StackConfig's (allow_bpftrace=True)."""
    return private_config(state_dir, hosts, kind=kind, subnet=subnet, heartbeat_s=1.0, **fields)


@contextmanager
def ssh_stack(
    config: StackConfig, *, agents: bool = False, settings: dict[str, str] | None = None
) -> Iterator[Stack]:
    """The stack up with sshd (DEBUG3 logs) in every host; down and purged afterwards."""
    services = [sshd.Sshd(log_level="DEBUG3")]
    stack = Stack(config, services=services, agents=agents, settings=settings)
    stack.up(online_timeout_s=60)
    try:
        yield stack
    finally:
        down(config.state_dir, purge=True, reap=stack.reap)


def address(config: StackConfig, host: str) -> str:
    index = [h.name for h in config.hosts].index(host)
    return config.addresses(index)[1]


def target(config: StackConfig, host: str, **overrides: object) -> SshTarget:
    """The host as the controller would reach it: the stack's key and known_hosts."""
    fields: dict[str, object] = {
        "address": address(config, host),
        "key_file": sshd.controller_key(config),
        "use_agent": False,
        "known_hosts": sshd.known_hosts(config),
        "timeouts": Timeouts(connect_s=3, banner_s=5, auth_s=5, command_s=30),
    }
    fields.update(overrides)
    return SshTarget(**fields)  # type: ignore[arg-type]


def openssh_fingerprint(public_key: Path) -> str:
    """What `ssh-keygen -lf` says: checked against our own computation, not derived from it."""
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(public_key)],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    return out.split()[1]


def host_public_key(config: StackConfig, host: str) -> Path:
    key = sshd.host_key(config, host)
    return key.with_name(key.name + ".pub")


@dataclass
class SshdLog:
    """A host's sshd log (LogLevel DEBUG3), read from a mark: what one connection did."""

    path: Path

    def mark(self) -> int:
        return self.path.stat().st_size

    def since(self, mark: int) -> str:
        with self.path.open("rb") as f:
            f.seek(mark)
            return f.read().decode(errors="replace")

    def connection(self, mark: int, timeout_s: float = 5.0) -> str:
        """The lines of the first connection after `mark`, once sshd has logged its end."""
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.since(mark)
            start = re.search(r"^Connection from (\S+) port (\d+) ", text, re.M)
            if start:
                client, port = start.groups()
                ended = re.compile(
                    rf"^(Connection (closed|reset) by|Disconnected from|Received disconnect from|"
                    rf"Read error from remote host)"
                    rf".*{re.escape(client)} port {port}\b",
                    re.M,
                )
                if ended.search(text, start.start()):
                    return text[start.start() :]
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no finished connection in {self.path} after {timeout_s}s:\n{text}"
                )
            time.sleep(0.05)


# What sshd logs once a client asks for authentication: the service request (packet type 5),
# any userauth request (50), and the outcome lines of publickey or any other method.
AUTH_TRACES = re.compile(
    r"receive packet: type 5\b|receive packet: type 50\b|userauth|publickey|Accepted|"
    r"Failed|Postponed|authenticating user|SSH2_MSG_SERVICE_REQUEST",
    re.I,
)


def sshd_log(config: StackConfig, host: str) -> SshdLog:
    return SshdLog(sshd.log_path(config, host))


@contextmanager
def sink(config: StackConfig) -> Iterator[str]:
    """An address in a namespace of our own that swallows every packet sent to it: the SYN
    arrives, but the namespace's route back is a blackhole, so no SYN-ACK or RST ever leaves."""
    index = len(config.hosts)
    root_addr, sink_addr = config.addresses(index)
    netns, link = f"{config.netns_prefix}sink", config.link(index)
    try:
        make_netns(netns, link, root_addr, sink_addr)
        subprocess.run(
            ["ip", "-n", netns, "route", "add", "blackhole", f"{root_addr}/32"],
            check=True,
            capture_output=True,
            timeout=10,
        )
        yield sink_addr
    finally:
        remove_netns(netns, link)


def pids(config: StackConfig) -> dict[str, int]:
    return json.loads((config.state_dir / "pids.json").read_text())  # type: ignore[no-any-return]


def inside(config: StackConfig, host: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    """Run a command in a host's network, mount and UTS namespaces (as root, not over SSH)."""
    holder = pids(config)[f"{host}-ns"]
    return subprocess.run(
        ["nsenter", f"--target={holder}", "--net", "--mount", "--uts", "--", *cmd],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def rekey(config: StackConfig, host: str) -> str:
    """Give a host a new host key, as a reinstall would: sshd re-execs on SIGHUP and reads it.
    Returns the new key's fingerprint."""
    key = sshd.host_key(config, host)
    key.unlink()
    host_public_key(config, host).unlink()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30
    )
    log = sshd_log(config, host)
    mark = log.mark()
    os.kill(pids(config)[f"{host}-sshd"], signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "Server listening on" not in log.since(mark):
        if time.monotonic() > deadline:
            raise AssertionError(f"{host}'s sshd did not restart:\n{log.since(mark)}")
        time.sleep(0.05)
    return openssh_fingerprint(host_public_key(config, host))
