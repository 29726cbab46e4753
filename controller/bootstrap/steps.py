"""What every step shares: the remote seam, the run's context, and how a step reports.

A step is a function `(ctx) -> StepStatus` (ok: already as wanted; changed; skipped) that
raises StepFailed with a clear message when the host cannot be brought where it should be.
Steps are idempotent: each looks before it acts. Their output goes through ctx.log (and
is redacted before it is recorded).
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from controller.bootstrap.artifacts import ArtifactSource, Bundle
from controller.bootstrap.models import BootstrapOptions, StepStatus
from controller.bootstrap.redact import Redactor
from controller.bootstrap.ssh import CommandResult, HostKeyRejected, SshError, SshTarget
from controller.db import utcnow
from controller.settings import Settings

BASE = "/opt/fleettrace"
WHEELS = f"{BASE}/wheels"
VENV = f"{BASE}/venv"
BIN = f"{BASE}/bin"
RUN_DIR = f"{BASE}/run"
LOG_DIR = f"{BASE}/log"
CONFIG_DIR = "/etc/fleettrace"
CONFIG_FILE = f"{CONFIG_DIR}/agent.env"
# The controller's public keys the agent trusts (its default FLEETTRACE_TRUSTED_KEYS).
TRUSTED_KEYS_FILE = f"{CONFIG_DIR}/controller-keys.pub"
# Where the agent keeps the run ids it accepted (its default FLEETTRACE_STATE_DIR).
STATE_DIR = "/var/lib/fleettrace"
UNIT_NAME = "fleettrace-agent.service"
UNIT_FILE = f"/etc/systemd/system/{UNIT_NAME}"
SUPERVISOR = f"{BIN}/fleettrace-supervise"
# A non-root user's uploads wait here (in its home) until sudo installs them.
STAGING = ".fleettrace-upload"
ASSETS = Path(__file__).resolve().parents[2] / "deploy" / "agent"


class StepFailed(Exception):
    """A step could not do its work; the message says why, for the operator."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Remote(Protocol):
    """What steps need from a connection (SshSession; a fake in unit tests)."""

    host_fingerprint: str | None
    trusted_new_key: bool

    def run(
        self,
        command: str,
        *,
        sudo: bool = False,
        timeout_s: float | None = None,
        stdin: bytes = b"",
    ) -> CommandResult: ...

    def put_file(self, local: Path, remote: str, mode: int = 0o644) -> None: ...

    def close(self) -> None: ...


Connector = Callable[[SshTarget], Remote]


class RunHooks(Protocol):
    """What steps tell or ask the controller's database."""

    def host_key_rejected(self, fingerprint: str) -> None: ...

    def host_key_trusted(self, fingerprint: str) -> None: ...

    def connected(self, fingerprint: str | None) -> None: ...

    def wait_heartbeat(
        self, *, since: datetime, probed_after: float | None, timeout_s: float
    ) -> str | None:
        """The agent version once a heartbeat with capabilities arrived at or after `since`
        (controller clock) carrying a probe made at or after `probed_after` (host clock)."""

    def agent_redis_url(self, current: str | None) -> str:
        """The host's own Redis URL for agent.env: `current` while it still is the host's
        identity, else a newly issued one (the old one stops working)."""

    def revoke_identity(self) -> bool:
        """Remove the host's Redis identity; True when it had one."""


@dataclass
class HostInfo:
    name: str
    address: str | None
    ssh_user: str
    cgroup: str | None


@dataclass
class Facts:
    """What preflight found on the host."""

    values: dict[str, str]
    skew_s: float | None = None

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key, default)

    @property
    def systemd(self) -> bool:
        return self.get("init") == "systemd"


@dataclass
class StepContext:
    host: HostInfo
    target: SshTarget
    options: BootstrapOptions
    settings: Settings
    artifacts: ArtifactSource
    hooks: RunHooks
    connector: Connector
    redact: Redactor
    remote: Remote | None = None
    facts: Facts | None = None
    bundle: Bundle | None = None
    # Set when the agent's code or config changed: the service step restarts it.
    restart_needed: bool = False
    restart_reasons: list[str] = field(default_factory=list)
    # When the agent was (re)started, by the controller's and by the host's clock: verify
    # wants a heartbeat after it, with a capability probe made by the new agent.
    agent_started_at: datetime | None = None
    agent_started_host_clock: float | None = None
    agent_version: str | None = None
    lines: list[str] = field(default_factory=list)

    @property
    def as_root(self) -> bool:
        return self.host.ssh_user == "root"

    def log(self, line: str) -> None:
        self.lines.append(line)

    def mark_agent_start(self) -> None:
        out = self.sh("date +%s.%N", sudo=False, show=False).stdout.strip()
        try:
            self.agent_started_host_clock = float(out)
        except ValueError:
            self.agent_started_host_clock = None  # no %N (busybox): the DB time must do
        self.agent_started_at = utcnow()

    def need_restart(self, reason: str) -> None:
        self.restart_needed = True
        self.restart_reasons.append(reason)

    def connect(self) -> Remote:
        """Connect with the host key checked first; a rejected key flags the host."""
        if self.remote is not None:
            return self.remote
        target = self.target
        where = f"{target.user}@{target.address}:{target.port}"
        try:
            remote = self.connector(target)
        except HostKeyRejected as exc:
            self.hooks.host_key_rejected(exc.fingerprint)
            raise StepFailed(f"host key rejected, nothing was sent: {exc.message}") from None
        except SshError as exc:
            raise StepFailed(f"cannot connect to {where}: {exc.message}") from None
        self.remote = remote
        fingerprint = remote.host_fingerprint
        if remote.trusted_new_key and fingerprint:
            self.hooks.host_key_trusted(fingerprint)
            self.log(f"trusted host key {fingerprint} on first use; pinned on the host from now")
        else:
            self.hooks.connected(fingerprint)
        self.log(f"connected to {where} (host key {fingerprint})")
        return remote

    def sh(
        self,
        command: str,
        *,
        sudo: bool = True,
        check: bool = True,
        stdin: bytes = b"",
        timeout_s: float | None = None,
        show: bool = True,
        what: str | None = None,
    ) -> CommandResult:
        """Run a shell command on the host (with sudo unless told otherwise); a non-zero exit
        with check=True fails the step, showing the command's output."""
        remote = self.connect()
        result = remote.run(command, sudo=sudo, stdin=stdin, timeout_s=timeout_s)
        if show and result.output:
            self.lines.extend(result.output.splitlines())
        if check and result.code != 0:
            if not show and result.output:
                self.lines.extend(result.output.splitlines())
            raise StepFailed(f"{what or _short(command)} failed (exit {result.code})")
        return result

    def remote_sha256(self, path: str) -> tuple[str | None, str | None]:
        """(sha256, octal mode) of a file on the host, or (None, None) when it is absent."""
        quoted = shlex.quote(path)
        result = self.sh(
            f"if [ -f {quoted} ]; then sha256sum {quoted} | cut -d' ' -f1; stat -c %a {quoted}; fi",
            show=False,
        )
        parts = result.stdout.split()
        if len(parts) < 2:
            return None, None
        return parts[0], parts[1]

    def ensure_file(self, path: str, data: bytes, mode: int) -> bool:
        """Write `data` to `path` (created with `mode`, via stdin: never on a command line)
        unless it holds exactly that already; True when it changed something."""
        digest, found_mode = self.remote_sha256(path)
        if digest == hashlib.sha256(data).hexdigest() and found_mode == f"{mode:o}":
            return False
        quoted, tmp = shlex.quote(path), shlex.quote(path + ".tmp")
        umask = f"{0o777 & ~mode:03o}"
        parent = shlex.quote(str(Path(path).parent))
        self.sh(
            f"mkdir -p {parent} && umask {umask} && rm -f {tmp} && cat > {tmp}"
            f" && chmod {mode:o} {tmp} && mv -f {tmp} {quoted}",
            stdin=data,
            what=f"writing {path}",
        )
        return True

    def close(self) -> None:
        if self.remote is not None:
            self.remote.close()
            self.remote = None


Step = Callable[[StepContext], StepStatus]


def asset(name: str) -> bytes:
    """A file from deploy/agent/ that lands on hosts."""
    return (ASSETS / name).read_bytes()


def _short(command: str) -> str:
    first = command.strip().splitlines()[0] if command.strip() else command
    return f"`{first[:60]}{'...' if len(first) > 60 else ''}`"
