"""The SSH layer against real OpenSSH servers in the local hosts' namespaces.

Host keys are checked before any credential leaves: the sshd log (DEBUG3) of a refused
connection shows the key exchange and no service or userauth request at all.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.bootstrap.ssh import (
    AuthFailed,
    CommandTimeout,
    HostKeyRejected,
    SshSession,
    Timeouts,
    Unreachable,
)
from devstack import Stack, down, machine, sshd
from tests.controller.sshfleet import (
    AUTH_TRACES,
    WEB_AND_DB,
    address,
    host_public_key,
    openssh_fingerprint,
    ssh_stack,
    sshd_log,
    stack_config,
    target,
)
from tests.controller.sshfleet import sink as make_sink

pytestmark = pytest.mark.root

HOSTS = WEB_AND_DB


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = stack_config(tmp_path_factory.mktemp("ssh"), HOSTS, "s", subnet=150)
    with ssh_stack(config) as stack:
        yield stack


def _other_key(tmp_path: Path) -> str:
    """An ed25519 public key that is not the host's: `kind blob`."""
    key = tmp_path / "other"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30
    )
    return " ".join(key.with_name("other.pub").read_text().split()[:2])


def test_connects_with_known_hosts_and_runs_in_the_hosts_namespaces(stack: Stack) -> None:
    config = stack.config
    for host in config.hosts:
        with SshSession(target(config, host.name)) as session:
            result = session.run("hostname; cat /etc/fleettrace/agent.env 2>&1; ls /opt")
            expected = openssh_fingerprint(host_public_key(config, host.name))
            assert session.host_fingerprint == expected
            assert not session.trusted_new_key
        lines = result.stdout.splitlines()
        # Its own UTS namespace, and a bare /etc/fleettrace: no agent was installed.
        assert lines[0] == host.name, result
        assert "No such file" in lines[1], result
        assert lines[2:] == ["fleettrace-demo"], result
        assert result.code == 0 and result.stderr == ""


def test_a_pinned_fingerprint_is_enough(stack: Stack) -> None:
    config = stack.config
    pinned = openssh_fingerprint(host_public_key(config, "db-1"))
    with SshSession(target(config, "db-1", known_hosts=None, pinned_fingerprint=pinned)) as s:
        assert s.run("hostname").stdout == "db-1\n"


@pytest.mark.parametrize("how", ["known_hosts", "pinned", "unknown"])
def test_a_changed_or_unknown_host_key_is_refused_before_any_credential(
    stack: Stack, tmp_path: Path, how: str
) -> None:
    config = stack.config
    real = openssh_fingerprint(host_public_key(config, "web-1"))
    known_hosts = tmp_path / "known_hosts"
    if how == "known_hosts":
        known_hosts.write_text(f"{address(config, 'web-1')} {_other_key(tmp_path)}\n")
        overrides: dict[str, object] = {"known_hosts": known_hosts}
    elif how == "pinned":
        # The fingerprint of another host's real key: the wrong host answering.
        pinned = openssh_fingerprint(host_public_key(config, "db-1"))
        overrides = {"known_hosts": None, "pinned_fingerprint": pinned}
    else:
        known_hosts.write_text(f"{address(config, 'db-1')} {_other_key(tmp_path)}\n")
        overrides = {"known_hosts": known_hosts}
    log = sshd_log(config, "web-1")
    mark = log.mark()
    session = SshSession(target(config, "web-1", **overrides))
    with pytest.raises(HostKeyRejected) as refused:
        session.connect()
    assert refused.value.fingerprint == real
    assert real in str(refused.value)
    assert session.transport is None
    seen = log.connection(mark)
    # The server got as far as the key exchange, and the client never asked to authenticate.
    assert "KEX done" in seen, seen
    traces = [line for line in seen.splitlines() if AUTH_TRACES.search(line)]
    assert traces == [], traces


def test_the_log_check_sees_an_authentication(stack: Stack) -> None:
    """The counterpart of the test above: the same check on a normal login does find it."""
    config = stack.config
    log = sshd_log(config, "web-1")
    mark = log.mark()
    with SshSession(target(config, "web-1")) as session:
        session.run("true")
    seen = log.connection(mark)
    assert "receive packet: type 50" in seen
    assert "Accepted publickey for root" in seen


def test_trust_on_first_use_is_explicit_and_reports_the_fingerprint(stack: Stack) -> None:
    config = stack.config
    tofu = target(config, "db-1", known_hosts=None, trust_on_first_use=True)
    with SshSession(tofu) as session:
        assert session.trusted_new_key
        assert session.host_fingerprint == openssh_fingerprint(host_public_key(config, "db-1"))
        assert session.run("hostname").stdout == "db-1\n"


def test_a_key_the_host_does_not_accept_fails_authentication(stack: Stack, tmp_path: Path) -> None:
    _other_key(tmp_path)
    with pytest.raises(AuthFailed, match="no key was accepted for root@"):
        SshSession(target(stack.config, "web-1", key_file=tmp_path / "other")).connect()


def test_an_address_that_drops_packets_fails_within_the_connect_timeout(stack: Stack) -> None:
    with make_sink(stack.config) as sink:
        started = time.monotonic()
        with pytest.raises(Unreachable) as failed:
            SshSession(
                target(stack.config, "web-1", address=sink, timeouts=Timeouts(connect_s=1.5))
            ).connect()
        took = time.monotonic() - started
    assert 1.4 < took < 1.5 + 3, took  # the timeout, plus what a loaded machine adds
    assert str(failed.value) == f"cannot reach {sink}:22 within 1.5s: timed out"


def test_a_port_without_sshd_is_refused_at_once(stack: Stack) -> None:
    started = time.monotonic()
    with pytest.raises(Unreachable, match=r"cannot reach 10\.\d+\.\d+\.\d+:2222 within 3s: "):
        SshSession(target(stack.config, "web-1", port=2222)).connect()
    assert time.monotonic() - started < 1.0


def test_a_non_root_user_runs_commands_as_root_with_sudo(stack: Stack) -> None:
    with SshSession(target(stack.config, "web-1", user=sshd.SUDO_USER)) as session:
        plain = session.run("id -un; id -u")
        assert plain.stdout.split()[0] == sshd.SUDO_USER
        assert plain.stdout.split()[1] != "0"
        as_root = session.run("id -u; hostname", sudo=True)
        assert as_root.stdout == "0\nweb-1\n"
        # Nothing from sudo or sshd on stderr: step output stays the command's own.
        assert as_root.stderr == "" and as_root.code == 0
        assert session.run("exit 7", sudo=True).code == 7
        # A home of its own in each host, where uploads can be staged.
        assert session.run("cd && pwd && touch web-1-was-here && ls").stdout == (
            f"/home/{sshd.SUDO_USER}\nweb-1-was-here\n"
        )
    with SshSession(target(stack.config, "db-1", user=sshd.SUDO_USER)) as session:
        assert session.run("cd && ls -A").stdout == ""


@pytest.mark.parametrize("user", ["root", sshd.SUDO_USER])
def test_a_command_timeout_raises_and_leaves_nothing_running(stack: Stack, user: str) -> None:
    marker = f"{time.monotonic() % 1000:.3f}"
    with SshSession(target(stack.config, "db-1", user=user)) as session:
        started = time.monotonic()
        with pytest.raises(CommandTimeout, match="timed out after 1s"):
            session.run(f"sleep 40{marker}", sudo=True, timeout_s=1)
        assert time.monotonic() - started < 1.5
        assert session.run("echo still usable").stdout == "still usable\n"
        # The host-side `timeout` kills the command's process group a little after ours.
        deadline = time.monotonic() + 8
        while _running(f"sleep 40{marker}"):
            assert time.monotonic() < deadline, "the timed-out command still runs on the host"
            time.sleep(0.2)


def _running(pattern: str) -> bool:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0


def test_large_input_and_output_pass_through(stack: Stack) -> None:
    data = os.urandom(3 << 20)
    with SshSession(target(stack.config, "web-1")) as session:
        counted = session.run("wc -c", stdin=data)
        assert counted.stdout.strip() == str(len(data))
        # A command that never reads its input still finishes with its own status.
        assert session.run("exit 3", stdin=data).code == 3
        big = session.run("head -c 300000 /dev/zero | tr '\\0' x")
        assert big.stdout == "x" * (64 * 1024), "output keeps its last 64 KiB"


class _Inotify:
    """The mode and size of every file named `prefix*` in a directory at each inotify event:
    its creation, writes, attribute changes and renames into place."""

    IN_MODIFY, IN_ATTRIB, IN_MOVED_TO, IN_CREATE = 0x2, 0x4, 0x80, 0x100
    KINDS = {IN_MODIFY: "write", IN_ATTRIB: "attrib", IN_MOVED_TO: "moved", IN_CREATE: "create"}

    def __init__(self, directory: Path, prefix: str) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        mask = sum(self.KINDS)
        if self.fd < 0 or self.libc.inotify_add_watch(self.fd, bytes(directory), mask) < 0:
            raise OSError(ctypes.get_errno(), "inotify")
        self.directory, self.prefix = directory, prefix.encode()
        self.seen: list[tuple[str, str, int, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stop.is_set():
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                time.sleep(0.0002)
                continue
            offset = 0
            while offset < len(data):
                _, mask, _, size = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16 : offset + 16 + size].rstrip(b"\0")
                offset += 16 + size
                if not name.startswith(self.prefix):
                    continue
                try:
                    st = os.stat(self.directory / name.decode())
                except FileNotFoundError:
                    continue
                for bit, kind in self.KINDS.items():
                    if mask & bit:
                        self.seen.append((kind, name.decode(), st.st_mode & 0o777, st.st_size))

    def close(self) -> None:
        time.sleep(0.2)
        self.stop.set()
        self.thread.join(timeout=2)
        os.close(self.fd)


@pytest.mark.parametrize("existing", [False, True])
def test_put_bytes_never_lets_others_read_what_it_writes(stack: Stack, existing: bool) -> None:
    config = stack.config
    # The host's /etc/fleettrace is this directory, bind-mounted in its mount namespace.
    outside = config.host_dir("web-1") / "etc"
    name = f"secret-{existing}.env"
    old_reader = None
    if existing:
        (outside / name).write_text("old\n")
        (outside / name).chmod(0o644)
        # Someone who opened the old, readable file before the new secret was written.
        old_reader = (outside / name).open("rb")
    watch = _Inotify(outside, name)
    try:
        with SshSession(target(config, "web-1")) as session:
            session.put_bytes(b"token=s3cret\n", f"/etc/fleettrace/{name}")
            assert session.remote_mode(f"/etc/fleettrace/{name}") == 0o600
    finally:
        watch.close()
    try:
        assert (outside / name).read_bytes() == b"token=s3cret\n"
        assert (outside / name).stat().st_mode & 0o777 == 0o600
        assert sorted(p.name for p in outside.iterdir() if p.name.startswith(name)) == [name]
        # Every file that ever held the secret was 0600 from its creation on.
        created = [event for event in watch.seen if event[0] == "create"]
        assert created and all(mode == 0o600 for _, _, mode, _ in created), watch.seen
        assert all(mode == 0o600 for _, _, mode, size in watch.seen if size), watch.seen
        if old_reader is not None:
            assert old_reader.read() == b"old\n", "the old file must not receive the secret"
    finally:
        if old_reader is not None:
            old_reader.close()
        (outside / name).unlink()


def test_teardown_removes_sshd_its_user_and_the_sudo_rule(stack: Stack) -> None:
    config = stack.config
    record = json.loads((config.state_dir / sshd.RECORD).read_text())
    shared = json.loads(machine.RECORD.read_text())
    assert str(config.state_dir) in shared["stacks"]
    alone = shared["stacks"] == [str(config.state_dir)]
    pids = json.loads((config.state_dir / "pids.json").read_text())
    sshd_pids = [pid for name, pid in pids.items() if name.endswith("-sshd")]
    assert len(sshd_pids) == len(config.hosts)
    assert Path(record["sudoers"]).exists()
    assert down(config.state_dir, purge=True, reap=stack.reap)
    for pid in sshd_pids:
        assert not Path(f"/proc/{pid}").exists()
    assert not Path(record["sudoers"]).exists()
    if alone:
        # The last stack out removes what any of them made: the user, its home, /run/sshd.
        assert not machine.RECORD.exists()
        for kind, value in shared["made"]:
            if kind == "user":
                assert not machine.user_exists(value)
            else:
                assert not Path(value).exists()
    else:
        assert str(config.state_dir) not in json.loads(machine.RECORD.read_text())["stacks"]
    assert not config.state_dir.exists()
