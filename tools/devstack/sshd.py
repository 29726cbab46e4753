"""A real OpenSSH server in every local host, so bootstrap is tested against sshd itself.

Per host: its own ed25519 host key and sshd_config under the host's dir, sshd listening on the
host's namespace address. Per stack: one key pair for the controller, a known_hosts file with
every host's key, and optionally a non-root user with passwordless sudo. What this makes
outside the state dir (the user, a sudoers drop-in, /run/sshd) is recorded in the state dir
before it is made, so `down` undoes it even after a crash; the user and /run/sshd are shared
with other stacks up at the same time (devstack/machine.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

from devstack import machine, system
from devstack.config import DevstackError, HostSpec, StackConfig
from devstack.machine import Shared

SSHD = Path("/usr/sbin/sshd")
SUDO_USER = "ftdeploy"
# sshd bind-mounts a per-host dir over the user's home in its host: hosts share /home here,
# and bootstrap stages uploads in the home of a non-root user.
BIND_HOME = 'mount --bind "$0" "$1" && shift && exec "$@"'
SUDOERS_DIR = Path("/etc/sudoers.d")
SUDOERS_PREFIX = "fleettrace-dev-"
# sshd's compiled-in privilege separation directory on Debian.
PRIVSEP_DIR = Path("/run/sshd")
RECORD = "sshd.json"
NEEDED = ("ssh-keygen", "useradd", "userdel", "visudo", "cat")

SSHD_CONFIG = """\
# Written by `fleettrace dev up --ssh` for host {host}; sshd runs with -f on this file.
ListenAddress {address}
Port {port}
HostKey "{host_key}"
PidFile none
# Read as root by a command: the state dir is private to root and sshd's StrictModes would
# refuse a keys file under /tmp, yet the non-root user must log in with the same key.
AuthorizedKeysFile none
AuthorizedKeysCommand {cat} "{authorized_keys}"
AuthorizedKeysCommandUser root
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers {users}
UsePAM no
UseDNS no
PrintMotd no
X11Forwarding no
AllowTcpForwarding no
MaxStartups 64
LogLevel {log_level}
Subsystem sftp internal-sftp
"""


def ssh_dir(config: StackConfig) -> Path:
    """The controller's key pair, the authorized keys and the known_hosts of the stack."""
    return config.state_dir / "ssh"


def controller_key(config: StackConfig) -> Path:
    """The private key the controller logs in with (mode 0600; `.pub` beside it)."""
    return ssh_dir(config) / "id_ed25519"


def known_hosts(config: StackConfig) -> Path:
    return ssh_dir(config) / "known_hosts"


def sshd_dir(config: StackConfig, host: str) -> Path:
    return config.host_dir(host) / "sshd"


def host_key(config: StackConfig, host: str) -> Path:
    return sshd_dir(config, host) / "ssh_host_ed25519_key"


def sshd_config(config: StackConfig, host: str) -> Path:
    return sshd_dir(config, host) / "sshd_config"


def user_home(config: StackConfig, host: str) -> Path:
    """The sudo user's home in this host (mounted over its home directory there)."""
    return config.host_dir(host) / "home"


def log_path(config: StackConfig, host: str) -> Path:
    """sshd's log: the file the stack sends its output to (both append)."""
    return config.logs_dir / f"{host}-{Sshd.name}.log"


def sudoers_file(config: StackConfig) -> Path:
    """One drop-in per stack, named from its state dir (sudo skips names with a dot)."""
    tag = hashlib.sha256(str(config.state_dir.resolve()).encode()).hexdigest()[:12]
    return SUDOERS_DIR / f"{SUDOERS_PREFIX}{tag}"


class Sshd:
    """The HostService that runs `sshd -D -e -f CONFIG` in each host's namespaces."""

    name = "sshd"

    def __init__(
        self, *, sudo_user: str | None = SUDO_USER, log_level: str = "VERBOSE", port: int = 22
    ) -> None:
        self.sudo_user = sudo_user
        self.log_level = log_level
        self.port = port

    def setup(self, config: StackConfig) -> dict[str, str]:
        """Once per stack: the controller's key pair, /run/sshd, the sudo user and its rule."""
        missing = [tool for tool in NEEDED if shutil.which(tool) is None]
        if not SSHD.exists():
            missing.insert(0, str(SSHD))
        if missing:
            raise DevstackError(f"--ssh needs {', '.join(missing)} (run scripts/setup.sh)")
        if self.sudo_user is not None and not SUDOERS_DIR.is_dir():
            raise DevstackError(f"no {SUDOERS_DIR}: install sudo (scripts/setup.sh)")
        # Recorded first: `down` then leaves the machine's shared things even after a crash.
        record: dict[str, Any] = {}
        _save_record(config, record)
        with machine.join(config.state_dir) as shared:
            shared.directory(PRIVSEP_DIR)
            if self.sudo_user is not None:
                self._sudo_user(config, record, shared)
        keys = ssh_dir(config)
        keys.mkdir(mode=0o700, exist_ok=True)
        key = controller_key(config)
        _keygen(key, comment=f"fleettrace-dev controller ({config.state_dir})")
        shutil.copyfile(key.with_name(key.name + ".pub"), keys / "authorized_keys")
        known_hosts(config).write_text("")
        return {"FLEETTRACE_SSH_KEY": str(key), "FLEETTRACE_KNOWN_HOSTS": str(known_hosts(config))}

    def _sudo_user(self, config: StackConfig, record: dict[str, Any], shared: Shared) -> None:
        """The user (shared by every stack) and this stack's sudo rule for it."""
        user = self.sudo_user
        assert user is not None
        shared.user(user, Path("/home") / user)
        # Only a mountpoint outside the hosts: each host's sshd mounts its own home over it.
        shared.directory(Path(pwd.getpwnam(user).pw_dir))
        drop_in = sudoers_file(config)
        record["sudoers"] = str(drop_in)
        _save_record(config, record)
        rule = (
            f"# fleettrace dev stack in {config.state_dir}: removed by `fleettrace dev down`\n"
            f"{user} ALL=(ALL:ALL) NOPASSWD: ALL\n"
        )
        staged = drop_in.with_name(f".{drop_in.name}.new")
        staged.write_text(rule)
        staged.chmod(0o440)
        try:
            system.run("visudo", "-c", "-q", "-f", str(staged))
            staged.replace(drop_in)
        finally:
            staged.unlink(missing_ok=True)

    def prepare(self, config: StackConfig, host: HostSpec, index: int) -> None:
        """The host's key, its sshd_config, and its line in the stack's known_hosts."""
        home = sshd_dir(config, host.name)
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = host_key(config, host.name)
        _keygen(key, comment=f"{host.name} (fleettrace-dev)")
        address = config.addresses(index)[1]
        users = "root" if self.sudo_user is None else f"root {self.sudo_user}"
        sshd_config(config, host.name).write_text(
            SSHD_CONFIG.format(
                host=host.name,
                address=address,
                port=self.port,
                host_key=key,
                cat=shutil.which("cat"),
                authorized_keys=str(ssh_dir(config) / "authorized_keys").replace("%", "%%"),
                users=users,
                log_level=self.log_level,
            )
        )
        if self.sudo_user is not None:
            entry = pwd.getpwnam(self.sudo_user)
            own_home = user_home(config, host.name)
            own_home.mkdir(mode=0o700, exist_ok=True)
            os.chown(own_home, entry.pw_uid, entry.pw_gid)
        kind, blob = key.with_name(key.name + ".pub").read_text().split()[:2]
        name = address if self.port == 22 else f"[{address}]:{self.port}"
        with known_hosts(config).open("a") as out:
            out.write(f"{name} {kind} {blob}\n")

    def command(self, config: StackConfig, host: HostSpec, index: int) -> list[str]:
        # -E, not -e: with -e, debug lines of a session's start reach the client's stderr.
        log_file = log_path(config, host.name)
        sshd = [str(SSHD), "-D", "-E", str(log_file), "-f", str(sshd_config(config, host.name))]
        if self.sudo_user is None:
            return sshd
        own_home = str(user_home(config, host.name))
        return ["sh", "-c", BIND_HOME, own_home, pwd.getpwnam(self.sudo_user).pw_dir, *sshd]

    def ready(self, config: StackConfig, host: HostSpec, index: int) -> bool:
        """sshd answers on the host's address with its banner."""
        # An emulated VM's sshd takes seconds to fork and re-exec before its banner.
        timeout_s = 10.0 if host.kernel is not None else 0.5
        try:
            address = (config.addresses(index)[1], self.port)
            with socket.create_connection(address, timeout_s) as sock:
                sock.settimeout(timeout_s)
                return sock.recv(8).startswith(b"SSH-")
        except OSError:
            return False


def undo(config: StackConfig) -> None:
    """Remove what `Sshd.setup` made outside the state dir (its processes are gone by now)."""
    path = config.state_dir / RECORD
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except ValueError as exc:
        raise DevstackError(f"cannot read {path}: {exc}") from None
    if "sudoers" in record:
        Path(record["sudoers"]).unlink(missing_ok=True)
    machine.leave(config.state_dir, alive=RECORD)
    path.unlink()


def _save_record(config: StackConfig, record: dict[str, Any]) -> None:
    path = config.state_dir / RECORD
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def _keygen(path: Path, *, comment: str) -> None:
    """A new ed25519 key pair without a passphrase; ssh-keygen makes the private one 0600."""
    for old in (path, path.with_name(path.name + ".pub")):
        old.unlink(missing_ok=True)
    done = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
    )
    if done.returncode != 0:
        raise DevstackError(f"ssh-keygen for {path}: {done.stderr.strip() or done.returncode}")
    path.chmod(0o600)
