"""The machine side of a local stack: commands, network namespaces, cgroups, processes."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from devstack.config import DevstackError
from devstack.harness import wait_for
from node_agent.scope import cgroup2_mount

log = logging.getLogger(__name__)
NETNS_DIR = Path("/run/netns")
# Moves the shell into the cgroup, then becomes the command: the pid stays the same.
INTO_CGROUP = 'echo $$ > "$0" && exec "$@"'


def run(*cmd: str) -> str:
    """Run a command to completion; its stderr becomes the error."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DevstackError(f"{' '.join(cmd)}: {exc}") from None
    if done.returncode != 0:
        raise DevstackError(f"{' '.join(cmd)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


# -- network ------------------------------------------------------------------------------------


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def make_netns(name: str, link: str, root_addr: str, host_addr: str) -> None:
    """A network namespace joined to the root one by a veth pair: `link` outside, eth0 inside."""
    run("ip", "netns", "add", name)
    run("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", name)
    run("ip", "addr", "add", f"{root_addr}/30", "dev", link)
    run("ip", "link", "set", link, "up")
    run("ip", "-n", name, "addr", "add", f"{host_addr}/30", "dev", "eth0")
    run("ip", "-n", name, "link", "set", "eth0", "up")
    run("ip", "-n", name, "link", "set", "lo", "up")


def make_tap(link: str, root_addr: str) -> None:
    """A tap for a VM host's QEMU (it opens it by name), its root side at `root_addr`/30."""
    run("ip", "tuntap", "add", "dev", link, "mode", "tap")
    run("ip", "addr", "add", f"{root_addr}/30", "dev", link)
    run("ip", "link", "set", link, "up")


def add_route(netns: str, address: str, via: str) -> None:
    """One more address a namespaced host reaches through its veth."""
    run("ip", "-n", netns, "route", "add", f"{address}/32", "via", via)


def remove_netns(name: str, link: str) -> None:
    if link_exists(link):
        run("ip", "link", "del", link)
    if netns_exists(name):
        run("ip", "netns", "del", name)


# -- cgroups ------------------------------------------------------------------------------------


def cgroup_root() -> Path:
    root = cgroup2_mount()
    if root is None:
        raise DevstackError("no cgroup v2 hierarchy is mounted on this machine")
    return root


def cgroup_path(relative: str) -> Path:
    return cgroup_root() / relative


def make_cgroup(relative: str) -> Path:
    path = cgroup_path(relative)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cgroup_pids(path: Path) -> list[int]:
    """Every process in a cgroup and below it."""
    pids: list[int] = []
    if not path.is_dir():
        return pids
    for procs in sorted(path.rglob("cgroup.procs")):
        with contextlib.suppress(OSError):
            pids.extend(int(p) for p in procs.read_text().split())
    return pids


def _signal_all(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _populated(path: Path) -> bool:
    """Processes anywhere below `path`, counting those still exiting (not in cgroup.procs)."""
    try:
        return "populated 1" in (path / "cgroup.events").read_text()
    except OSError:
        return bool(cgroup_pids(path))


def _wait_empty(path: Path, timeout_s: float) -> bool:
    try:
        wait_for(lambda: not _populated(path), timeout_s, f"{path} to empty")
    except TimeoutError:
        return False
    return True


def stop_cgroup(path: Path, grace_s: float = 3.0) -> None:
    """SIGTERM everything in the subtree, then kill what is left (cgroup.kill takes forks too)."""
    _signal_all(cgroup_pids(path), signal.SIGTERM)
    if _wait_empty(path, grace_s):
        return
    kill = path / "cgroup.kill"
    if kill.exists():
        kill.write_text("1")
    else:
        _signal_all(cgroup_pids(path), signal.SIGKILL)
    if not _wait_empty(path, 5.0):
        raise DevstackError(f"processes still in {path} after SIGKILL: {cgroup_pids(path)}")


def remove_cgroup(path: Path) -> None:
    """Remove a cgroup subtree, deepest first (each must be empty of processes)."""
    if not path.is_dir():
        return
    _wait_empty(path, 5.0)
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        _rmdir(child)
    _rmdir(path)


def _rmdir(path: Path) -> None:
    """rmdir, waiting out EBUSY from tasks that left cgroup.procs but are not released yet."""
    deadline = time.monotonic() + 5.0
    while True:
        try:
            path.rmdir()
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- processes ----------------------------------------------------------------------------------


def enter(pid: int) -> list[str]:
    """The prefix that runs a command in the network, mount and UTS namespaces of `pid`."""
    return ["nsenter", f"--target={pid}", "--net", "--mount", "--uts", "--wd=/", "--"]


def spawn(
    cmd: Sequence[str],
    *,
    cgroup: Path,
    log_file: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-lived process inside `cgroup`, in its own session, logging to `log_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        return subprocess.Popen(
            ["sh", "-c", INTO_CGROUP, str(cgroup / "cgroup.procs"), *cmd],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
