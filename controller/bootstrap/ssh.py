"""SSH with the host key checked before any credential leaves: paramiko's Transport, by hand.

paramiko's SSHClient would offer keys while deciding on the host key only through a policy
object; here the order is explicit: TCP connect, banner, key exchange, host key check, and
only then authentication. Every stage has its own timeout.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import math
import secrets
import shlex
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import paramiko
from paramiko.sftp import (
    CMD_HANDLE,
    CMD_OPEN,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_EXCL,
    SFTP_FLAG_WRITE,
)

from controller.errors import ControllerError

log = logging.getLogger(__name__)
OUTPUT_LIMIT = 64 * 1024


class SshError(ControllerError):
    """Root of the SSH layer's errors."""

    status = 502


class Unreachable(SshError):
    pass


class HostKeyRejected(SshError):
    """The host's key is unknown or differs from the one on record: nothing was sent."""

    def __init__(self, message: str, *, fingerprint: str) -> None:
        super().__init__(message)
        self.fingerprint = fingerprint


class AuthFailed(SshError):
    pass


class CommandTimeout(SshError):
    pass


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint, as `ssh-keygen -lf` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 10.0
    banner_s: float = 10.0
    auth_s: float = 15.0
    command_s: float = 600.0


@dataclass(frozen=True)
class SshTarget:
    """Where and how to connect, and which host key to trust."""

    address: str
    port: int = 22
    user: str = "root"
    key_file: Path | None = None
    use_agent: bool = True
    known_hosts: Path | None = None
    pinned_fingerprint: str | None = None
    trust_on_first_use: bool = False
    timeouts: Timeouts = field(default_factory=Timeouts)

    @property
    def known_hosts_name(self) -> str:
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"


@dataclass(frozen=True)
class CommandResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return (self.stdout + self.stderr).strip()


class SshSession:
    """One authenticated connection: run commands (optionally with sudo), upload files."""

    def __init__(self, target: SshTarget) -> None:
        self.target = target
        self.transport: paramiko.Transport | None = None
        self.host_fingerprint: str | None = None
        self.trusted_new_key = False
        self._sftp: paramiko.SFTPClient | None = None

    def __enter__(self) -> SshSession:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self) -> None:
        target = self.target
        try:
            sock = socket.create_connection(
                (target.address, target.port), timeout=target.timeouts.connect_s
            )
        except OSError as exc:
            raise Unreachable(
                f"cannot reach {target.address}:{target.port} within "
                f"{target.timeouts.connect_s:g}s: {exc.strerror or exc}"
            ) from None
        transport = paramiko.Transport(sock)
        transport.banner_timeout = target.timeouts.banner_s
        transport.auth_timeout = target.timeouts.auth_s
        self.transport = transport
        known_types = self._known_key_types()
        if known_types:
            # Like OpenSSH: ask for the key type we know, so a second type is not a "change".
            options = transport.get_security_options()
            options.key_types = [
                t for t in options.key_types if t in known_types
            ] or options.key_types
        try:
            transport.start_client(timeout=target.timeouts.banner_s + target.timeouts.connect_s)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise Unreachable(
                f"no SSH handshake with {target.address}:{target.port}: {exc}"
            ) from None
        self._check_host_key(transport.get_remote_server_key())
        self._authenticate(transport)

    def _known_hosts(self) -> dict[str, paramiko.PKey] | None:
        path = self.target.known_hosts
        if path is None or not path.exists():
            return None
        entry = paramiko.HostKeys(str(path)).lookup(self.target.known_hosts_name)
        return dict(entry) if entry is not None else None

    def _known_key_types(self) -> set[str]:
        known = self._known_hosts() or {}
        names = set(known)
        if "ssh-rsa" in names:
            names |= {"rsa-sha2-512", "rsa-sha2-256"}
        return names

    def _check_host_key(self, key: paramiko.PKey) -> None:
        target = self.target
        seen = fingerprint(key)
        self.host_fingerprint = seen
        if target.pinned_fingerprint is not None:
            if seen == target.pinned_fingerprint:
                return
            self.close()
            raise HostKeyRejected(
                f"host key of {target.address} changed: pinned {target.pinned_fingerprint},"
                f" offered {seen}; refusing to connect",
                fingerprint=seen,
            )
        known = self._known_hosts()
        if known is not None:
            if any(k == key for k in known.values()):
                return
            if known:
                self.close()
                raise HostKeyRejected(
                    f"host key of {target.known_hosts_name} does not match {target.known_hosts};"
                    f" offered {seen}; refusing to connect",
                    fingerprint=seen,
                )
        if target.trust_on_first_use:
            log.warning("trusting %s's key %s on first use", target.address, seen)
            self.trusted_new_key = True
            return
        self.close()
        raise HostKeyRejected(
            f"unknown host key {seen} for {target.known_hosts_name}: add it to known_hosts, pin"
            " it on the host, or allow trust on first use",
            fingerprint=seen,
        )

    def _authenticate(self, transport: paramiko.Transport) -> None:
        target = self.target
        keys: list[paramiko.PKey] = []
        if target.key_file is not None:
            try:
                keys.append(paramiko.PKey.from_path(target.key_file))
            except (OSError, paramiko.SSHException) as exc:
                self.close()
                raise AuthFailed(f"cannot load key {target.key_file}: {exc}") from None
        agent = paramiko.Agent() if target.use_agent else None
        if agent is not None:
            keys += list(agent.get_keys())
        try:
            for key in keys:
                try:
                    transport.auth_publickey(target.user, key)
                except paramiko.AuthenticationException:
                    continue
                except paramiko.SSHException as exc:
                    self.close()
                    raise AuthFailed(
                        f"authentication with {target.address} failed: {exc}"
                    ) from None
                if transport.is_authenticated():
                    return
        finally:
            if agent is not None:
                agent.close()  # its connection is only needed to sign during auth
        self.close()
        raise AuthFailed(
            f"no key was accepted for {target.user}@{target.address} ({len(keys)} offered)"
        )

    def run(
        self,
        command: str,
        *,
        sudo: bool = False,
        timeout_s: float | None = None,
        stdin: bytes = b"",
    ) -> CommandResult:
        """Run a shell command; with sudo when the user is not root (passwordless sudo)."""
        if self.transport is None:
            raise SshError("not connected")
        timeout = timeout_s or self.target.timeouts.command_s
        deadline = time.monotonic() + timeout
        # Closing the channel does not stop the command: `timeout` on the host kills its process
        # group shortly after our own deadline (under sudo, to reach root's processes). The
        # shell stays what it was: the login shell, or sh under sudo.
        limit = f"timeout -k 5 {math.ceil(timeout) + 2}"
        if sudo and self.target.user != "root":
            remote = f"sudo -n -- {limit} sh -c {shlex.quote(command)}"
        else:
            remote = f'{limit} "$SHELL" -c {shlex.quote(command)}'
        try:
            channel = self.transport.open_session(timeout=self.target.timeouts.connect_s)
            channel.exec_command(remote)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SshError(f"cannot run a command on {self.target.address}: {exc}") from None
        try:
            if stdin:
                channel.settimeout(max(deadline - time.monotonic(), 0.1))
                try:
                    channel.sendall(stdin)
                except TimeoutError:
                    raise CommandTimeout(
                        f"command timed out after {timeout:g}s sending its input: {command[:80]}"
                    ) from None
                except OSError:
                    pass  # the command exited without reading all of it: its status says how
            channel.shutdown_write()
            out, err = bytearray(), bytearray()
            while True:
                while channel.recv_ready():
                    out += channel.recv(32768)
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(32768)
                for buffer in (out, err):
                    del buffer[:-OUTPUT_LIMIT]
                if (
                    channel.exit_status_ready()
                    and not channel.recv_ready()
                    and not channel.recv_stderr_ready()
                ):
                    break
                if time.monotonic() > deadline:
                    raise CommandTimeout(f"command timed out after {timeout:g}s: {command[:80]}")
                time.sleep(0.02)
            code = channel.recv_exit_status()
        finally:
            channel.close()
        return CommandResult(code, _tail(out), _tail(err))

    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            if self.transport is None:
                raise SshError("not connected")
            self._sftp = paramiko.SFTPClient.from_transport(self.transport)
            if self._sftp is None:
                raise SshError("the host refused an SFTP channel")
        return self._sftp

    def put_file(self, local: Path, remote: str, mode: int = 0o644) -> None:
        sftp = self.sftp()
        sftp.put(str(local), remote)
        sftp.chmod(remote, mode)

    def put_bytes(self, data: bytes, remote: str, mode: int = 0o600) -> None:
        """Write a file created with `mode` from the start (secrets never sit world-readable).

        A new file beside it, renamed over it: whoever had the old file open (it may have been
        readable) never sees the new bytes, and no reader sees half a file.
        """
        sftp = self.sftp()
        staged = f"{remote}.ft-{secrets.token_hex(4)}"
        try:
            with _create(sftp, staged, mode) as handle:
                handle.write(data)
            sftp.posix_rename(staged, remote)
        except BaseException:
            with contextlib.suppress(OSError):
                sftp.remove(staged)
            raise

    def remote_mode(self, remote: str) -> int | None:
        try:
            return stat.S_IMODE(self.sftp().stat(remote).st_mode or 0)
        except OSError:
            return None

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        if self.transport is not None:
            self.transport.close()
            self.transport = None


def _create(sftp: paramiko.SFTPClient, remote: str, mode: int) -> paramiko.SFTPFile:
    """A new file opened for writing, created with `mode`: paramiko's open() sends no
    attributes, so the server would create it with its umask's mode (0644) until a chmod."""
    attrs = paramiko.SFTPAttributes()
    attrs.st_mode = mode
    flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL
    request = sftp._request  # type: ignore[attr-defined]
    kind, msg = request(CMD_OPEN, remote, flags, attrs)
    if kind != CMD_HANDLE:
        raise SshError(f"no handle for {remote} from the SFTP server")
    return paramiko.SFTPFile(sftp, msg.get_binary(), "wb")


def _tail(data: bytearray) -> str:
    text = bytes(data[-OUTPUT_LIMIT:]).decode("utf-8", "replace")
    return text
