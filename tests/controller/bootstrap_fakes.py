"""A fake host behind a fake SSH session, for the steps' decision logic only.

It understands exactly the commands the steps send and fails on any other, so a change in
the steps shows up here. Whether the commands work on a real host is for the sshd tests.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from controller.bootstrap.artifacts import ArtifactFile, Bundle, TargetPlatform
from controller.bootstrap.install import BUILD_MARKER
from controller.bootstrap.ssh import CommandResult, SshTarget
from controller.bootstrap.steps import BASE, CONFIG_FILE, UNIT_FILE

FINGERPRINT = "SHA256:" + "A" * 43


def default_facts() -> dict[str, str]:
    return {
        "os_id": "debian",
        "os_version": "12",
        "os_name": "Debian GNU/Linux 12 (bookworm)",
        "kernel": "6.1.0-18-amd64",
        "arch": "x86_64",
        "btf": "yes",
        "headers": "yes",
        "python": "3.11.2",
        "python_impl": "cpython",
        "glibc": "2.36",
        "bcc": "yes",
        "venv": "yes",
        "init": "other",
        "setsid": "yes",
        "apt-get": "yes",
        "dpkg-query": "yes",
        "disk_kb": str(10 * 1024 * 1024),
        "sudo": "root",
    }


@dataclass
class FakeHost:
    user: str = "root"
    facts: dict[str, str] = field(default_factory=default_facts)
    packages: set[str] = field(default_factory=lambda: {"python3-bpfcc", "python3-venv"})
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    wheels: dict[str, bytes] = field(default_factory=dict)
    staged: dict[str, bytes] = field(default_factory=dict)
    venv: bool = False
    build: str | None = None
    agent_version: str = "0.1.0"
    supervisor: bool = False
    starts: int = 0
    log_tail: str = "agent: starting"
    # Command substring -> the result to give instead (once, then removed).
    fail_once: dict[str, CommandResult] = field(default_factory=dict)
    on_start: Callable[[], None] | None = None
    commands: list[tuple[str, bool]] = field(default_factory=list)
    stdins: list[bytes] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)
    sessions: int = 0

    def ran(self, fragment: str) -> bool:
        return any(fragment in command for command, _ in self.commands)

    def exists(self, path: str) -> bool:
        if path == BASE:
            return self.venv or bool(self.wheels) or any(p.startswith(BASE) for p in self.files)
        return path in self.files


class FakeSession:
    def __init__(
        self, host: FakeHost, *, fingerprint: str = FINGERPRINT, trusted_new_key: bool = False
    ) -> None:
        self.host = host
        self.host_fingerprint: str | None = fingerprint
        self.trusted_new_key = trusted_new_key
        host.sessions += 1

    def close(self) -> None:
        pass

    def put_file(self, local: Path, remote: str, mode: int = 0o644) -> None:
        self.host.uploads.append(remote)
        self.host.staged[remote.rsplit("/", 1)[1]] = local.read_bytes()

    def run(
        self,
        command: str,
        *,
        sudo: bool = False,
        timeout_s: float | None = None,
        stdin: bytes = b"",
    ) -> CommandResult:
        host = self.host
        host.commands.append((command, sudo))
        if stdin:
            host.stdins.append(stdin)
        for fragment, result in list(host.fail_once.items()):
            if fragment in command:
                del host.fail_once[fragment]
                return result
        return self._answer(command, stdin)

    def _answer(self, command: str, stdin: bytes) -> CommandResult:
        host = self.host
        if "os_id=" in command:
            return ok("\n".join(f"{k}={v}" for k, v in host.facts.items()))
        if command.startswith("date +%s"):
            return ok(f"{time.time():.6f}")
        if "dpkg-query" in command:
            return ok("".join(f"{p} install ok installed\n" for p in sorted(host.packages)))
        if "apt-get install" in command:
            names = command.split("--no-install-recommends ", 1)[1].split(" ||")[0]
            host.packages |= set(shlex.split(names))
            return ok("Setting up packages")
        if "import bcc, venv, ensurepip" in command:
            return ok()
        if command == "bpftrace --version":
            if "bpftrace" in host.packages:
                return ok("bpftrace v0.17.0")
            return fail("sh: 1: bpftrace: not found", 127)
        if 'sha256sum -- "$f"' in command:
            return ok(
                "".join(
                    f"{hashlib.sha256(data).hexdigest()}  {name}\n"
                    for name, data in sorted(host.wheels.items())
                )
            )
        if command == 'printf %s "$HOME"':
            return ok(f"/home/{host.user}")
        if command.startswith("mkdir -p -m 700"):
            return ok()
        if command.startswith("install -m 0644"):
            host.wheels.update(host.staged)
            host.staged.clear()
            return ok()
        if command.startswith("rm -f -- "):
            for path in shlex.split(command)[3:]:
                host.wheels.pop(path.rsplit("/", 1)[1], None)
            return ok()
        if "echo venv=ok" in command:
            agent = "yes" if host.venv and host.build else "no"
            venv = "ok" if host.venv else "missing"
            return ok(f"venv={venv}\nbuild={host.build or ''}\nagent={agent}")
        if "-m venv --system-site-packages" in command:
            host.venv, host.build = True, None
            return ok()
        if "pip" in command and " install " in command:
            return ok()
        if "import node_agent" in command:
            return ok(host.agent_version)
        if command.startswith("echo ") and BUILD_MARKER in command:
            host.build = shlex.split(command)[1]
            return ok()
        if command.startswith("sed -n 's/^FLEETTRACE_REDIS_URL=//p' "):
            path = shlex.split(command)[3]
            data = host.files.get(path, (b"", 0))[0].decode()
            return ok(
                "".join(
                    line[21:] + "\n"
                    for line in data.splitlines()
                    if line.startswith("FLEETTRACE_REDIS_URL=")
                )
            )
        if "stat -c %a" in command:
            path = shlex.split(re.search(r"if \[ -f (.+?) \];", command).group(1))[0]  # type: ignore[union-attr]
            if path not in host.files:
                return ok()
            data, mode = host.files[path]
            return ok(f"{hashlib.sha256(data).hexdigest()}\n{mode:o}")
        if "cat > " in command:
            path = shlex.split(command.rsplit("mv -f ", 1)[1])[1]
            mode = int(re.search(r"chmod (\d+) ", command).group(1), 8)  # type: ignore[union-attr]
            host.files[path] = (stdin, mode)
            return ok()
        if "systemctl disable" in command:
            was = host.supervisor
            host.supervisor = False
            host.files = {p: v for p, v in host.files.items() if not p.endswith("-supervise")}
            return ok("stopped" if was else "")
        if "nohup setsid" in command:
            host.supervisor = True
            host.starts += 1
            if host.on_start is not None:
                host.on_start()
            return ok("started supervisor 4242")
        if "kill -TERM" in command:
            was = host.supervisor
            host.supervisor = False
            return ok("stopped" if was else "")
        if command.rstrip().endswith("alive"):
            return CommandResult(0 if host.supervisor else 1, "", "")
        if "tail -n" in command:
            return ok(host.log_tail)
        if 'echo "removed:' in command:
            removed = [p for p in (BASE, CONFIG_FILE) if host.exists(p)]
            host.files, host.wheels, host.venv, host.build = {}, {}, False, None
            return ok("removed:" + "".join(f" {p}" for p in removed))
        if 'echo "$p"' in command:
            return ok("\n".join(p for p in (BASE, CONFIG_FILE, UNIT_FILE) if host.exists(p)))
        if command == "sudo -n true":
            return ok()
        raise AssertionError(f"the fake host does not know this command: {command[:200]!r}")


def ok(stdout: str = "") -> CommandResult:
    return CommandResult(0, stdout, "")


def fail(stderr: str, code: int = 1) -> CommandResult:
    return CommandResult(code, "", stderr)


class FakeArtifacts:
    """A bundle of small files made in a temp dir; `release()` makes a newer agent build."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.builds = 0
        self.targets: list[TargetPlatform] = []
        self.deps = [self._file("pydantic-2.0-py3-none-any.whl", b"pydantic")]
        self.deps.append(self._file("redis-5.0-py3-none-any.whl", b"redis"))
        self.release()

    def _file(self, name: str, data: bytes) -> ArtifactFile:
        path = self.directory / name
        path.write_bytes(data)
        return ArtifactFile(name, path, hashlib.sha256(data).hexdigest(), len(data))

    def release(self) -> None:
        self.builds += 1
        self.wheel = self._file(
            "fleettrace-0.1.0-py3-none-any.whl", f"build {self.builds}".encode()
        )

    @property
    def build_id(self) -> str:
        return f"0.1.0+build{self.builds}"

    def bundle(self, target: TargetPlatform) -> Bundle:
        self.targets.append(target)
        return Bundle("0.1.0", self.build_id, self.wheel, tuple(self.deps))


def connector(hosts: dict[str, FakeHost], **session: object) -> Callable[[SshTarget], FakeSession]:
    def connect(target: SshTarget) -> FakeSession:
        return FakeSession(hosts[target.address], **session)  # type: ignore[arg-type]

    return connect
