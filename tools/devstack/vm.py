"""VM hosts of a local stack (`fleettrace dev up --kernel 6.1`): a distro kernel under QEMU.

Each VM has a tap on its /30 of the stack's plan (the machine .4i+1, the guest .4i+2), its
own hostname, and the host's dir as its writable /opt and /etc/fleettrace; the rest of this
machine's root filesystem is its read-only root (virtme-ng over 9p, overlays where a system
writes: /var among them, so a bootstrapped agent's /var/lib/fleettrace is the guest's own, in
its memory). Its init script starts what runs in a namespaced host: the workload in the host's
cgroup, sshd, and the agent unless the host starts bare for bootstrap. Redis is reached over
TCP at the stack's redis_address. QEMU runs in the host's agents cgroup and writes its pid
beside the host's files: `down` stops it by pid even after a crash.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

from devstack import host, kernels, system
from devstack.config import DevstackError, HostSpec, StackConfig
from node_agent.headers.probe import tree_release
from node_agent.wire import agent_url

MEMORY_MB = 2048
CPUS = 2
# Under emulation: boot ~30 s, the agent's start (Python over 9p) 2-6 min, its probe (two bcc
# compiles) 2-7 min, the more the busier the machine.
ONLINE_TIMEOUT_S = 900.0
STOP_GRACE_S = 10.0
# The agent's capability probe, and a trace's compile and attach: minutes in an emulated guest.
PROBE_TIMEOUT_S = 900.0
# Emulated, the agent's own CPU costs ~40x what it costs on a real host, and so a trace's
# overhead: jobs may lift the guard there (limits.overhead_pct up to 400, or none).
MAX_OVERHEAD_PCT = 400.0
# Heartbeats from an emulated guest come late when its CPUs are busy (a compile).
HEARTBEAT_TIMEOUT_S = 60.0
# Bootstrapping a bare VM: a venv and pip install take minutes emulated, and verify waits
# for the agent's start and probe.
BOOTSTRAP_COMMAND_TIMEOUT_S = 1800.0
BOOTSTRAP_VERIFY_TIMEOUT_S = ONLINE_TIMEOUT_S
NEEDED = ("qemu-system-x86_64", "ip", "apt-get", "dpkg-deb", "depmod", "busybox")


def parse_kernels(flags: Sequence[str]) -> tuple[HostSpec, ...]:
    """One VM host per `--kernel VERSION[:HEADERS]`, named k61-1, k61-2, k612-1, ..."""
    counts: dict[str, int] = {}
    specs = []
    for flag in flags:
        version, _, headers = flag.partition(":")
        kernels.check_version(version)
        headers = headers or "exact"
        if headers not in kernels.HEADERS_MODES:
            modes = ", ".join(kernels.HEADERS_MODES)
            raise DevstackError(f"--kernel {flag}: headers {headers!r} not in {modes}")
        counts[version] = counts.get(version, 0) + 1
        name = f"k{version.replace('.', '')}-{counts[version]}"
        labels = {"role": "vm", "kernel": version}
        specs.append(HostSpec(name, labels, kernel=version, headers=headers))
    return tuple(specs)


def preflight() -> None:
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    missing = [tool for tool in NEEDED if shutil.which(tool, path=path) is None]
    if not kernels.vng_path().exists():
        missing.append("virtme-ng (vng) in the venv")
    if missing:
        raise DevstackError(f"--kernel needs {', '.join(missing)} (run scripts/setup.sh)")


def pidfile(config: StackConfig, spec: HostSpec) -> Path:
    return config.host_dir(spec.name) / "qemu.pid"


def running(config: StackConfig, spec: HostSpec) -> bool:
    return kernels.qemu_pid(pidfile(config, spec)) is not None


def stop(config: StackConfig, spec: HostSpec) -> None:
    """SIGTERM its QEMU, SIGKILL after STOP_GRACE_S (the guest has nothing to save)."""
    kernels.stop_qemu(pidfile(config, spec), grace_s=STOP_GRACE_S)


# -- Redis over TCP -----------------------------------------------------------------------------


def agents_redis_url(config: StackConfig) -> str:
    """The agents' view of Redis from a VM (no credentials: each host gets its own)."""
    return f"redis://{config.redis_address}:{config.redis_port}/0"


def tcp_url(config: StackConfig, spec: HostSpec, join_url: str) -> str:
    """The host's own Redis identity (from its join URL, on the unix socket) over TCP."""
    secret = urlsplit(join_url).password
    if not secret:
        raise DevstackError(f"host {spec.name}: its join URL holds no secret")
    return agent_url(agents_redis_url(config), spec.name, secret)


def _on_lo(address: str) -> bool:
    return f" {address}/32 " in system.run("ip", "-o", "-4", "addr", "show", "dev", "lo")


def add_redis_address(config: StackConfig) -> None:
    if not _on_lo(config.redis_address):
        system.run("ip", "addr", "add", f"{config.redis_address}/32", "dev", "lo")


def remove_redis_address(config: StackConfig) -> None:
    if _on_lo(config.redis_address):
        system.run("ip", "addr", "del", f"{config.redis_address}/32", "dev", "lo")


# -- the VM -------------------------------------------------------------------------------------


def approximate_headers(kernel: kernels.Kernel, *, build: Path | None = None) -> Path:
    """This machine's own headers tree (`build`, else /lib/modules/<this release>/build),
    what an `approximate` VM links as its build: another kernel's, so never the guest's own
    (the guest would have exact headers while the flag said approximate)."""
    build = build if build is not None else Path("/lib/modules", os.uname().release, "build")
    if not (build / "Makefile").exists():
        raise DevstackError(f"approximate headers link this machine's {build}: it has none")
    tree = build.resolve()
    if tree_release(tree) == kernel.release:
        raise DevstackError(
            f"--kernel {kernel.version}:approximate: this machine's {build} is {kernel.release}'s"
            f" own, so the guest's headers would be exact; use --kernel {kernel.version}, or"
            " approximate headers on another version"
        )
    return tree


def agent_settings(config: StackConfig) -> dict[str, float]:
    """What an agent in an emulated guest needs (FLEETTRACE_<NAME>): the guest's own agent
    gets them in its environment, a bootstrapped one as options of the same names."""
    return {
        "heartbeat_s": config.heartbeat_s,
        "probe_timeout_s": PROBE_TIMEOUT_S,
        "compile_timeout_s": PROBE_TIMEOUT_S,
        "max_overhead_pct": MAX_OVERHEAD_PCT,
    }


def bootstrap_flags(config: StackConfig) -> list[str]:
    """`agent_settings` as `fleettrace hosts bootstrap` flags."""
    settings = agent_settings(config)
    return [
        f"--heartbeat {settings['heartbeat_s']:g}",
        f"--probe-timeout {settings['probe_timeout_s']:g}",
        f"--compile-timeout {settings['compile_timeout_s']:g}",
        f"--max-overhead {settings['max_overhead_pct']:g}",
    ]


def guest_script(
    config: StackConfig, spec: HostSpec, index: int, *, agent: bool, services: Sequence[str]
) -> str:
    """The guest's init: network, cgroups, then workload, services and agent until `down`."""
    root_addr, host_addr = config.addresses(index)
    logs = config.logs_dir / f"{spec.name}-guest.log"
    cgroups = Path("/sys/fs/cgroup")
    workload_cg = cgroups / config.host_cgroup(spec.name) / "cgroup.procs"
    agent_cg = cgroups / config.agent_cgroup(spec.name) / "cgroup.procs"
    alive = shlex.quote(str(config.alive_file))
    workload = [sys.executable, f"/opt/{host.WORKLOAD_DIR}/workload.py", spec.workload]
    lines = [
        "set -u",
        f"exec >>{shlex.quote(str(logs))} 2>&1",
        'echo "guest: kernel $(uname -r), up $(cut -d" " -f1 /proc/uptime) s"',
        "ip link set lo up",
        # Distro kernels build virtio-net as a module; the only NIC is the tap's peer.
        "modprobe virtio_net",
        "for _ in $(seq 50); do",
        "    dev=$(ls /sys/class/net | grep -vx lo | head -n 1)",
        '    [ -n "$dev" ] && break; sleep 0.1',
        "done",
        f'ip addr add {host_addr}/30 dev "$dev" && ip link set "$dev" up',
        f"ip route add default via {root_addr}",
        f"mkdir -p {shlex.quote(str(workload_cg.parent))} {shlex.quote(str(agent_cg.parent))}",
        # This shell and what it starts leave the host's data: the agent, sshd.
        f"echo $$ > {shlex.quote(str(agent_cg))}",
        "mkdir -p /run/sshd",
        # virtme locks every account in its /etc/shadow; sshd refuses a locked one's keys.
        "sed 's/^\\([^:]*\\):!:/\\1:*:/' /etc/shadow > /run/ft-shadow",
        "mount --bind /run/ft-shadow /etc/shadow",
        f"sh -c {shlex.quote(system.INTO_CGROUP)} {shlex.quote(str(workload_cg))} "
        f"{shlex.join([*workload, str(config.alive_file)])} &",
        *(f"{command} &" for command in services),
    ]
    if agent:
        argv = host.agent_argv(config, spec)
        agent_log = shlex.quote(str(config.logs_dir / f"{spec.name}-agent.log"))
        env = " ".join(f"FLEETTRACE_{k.upper()}={v:g}" for k, v in agent_settings(config).items())
        lines.append(f"{env} {shlex.join(argv)} >>{agent_log} 2>&1 &")
    lines += [
        'echo "guest: started, up $(cut -d" " -f1 /proc/uptime) s"',
        f"while [ -e {alive} ]; do sleep 1; done",
    ]
    return "\n".join(lines) + "\n"


def command(
    config: StackConfig,
    spec: HostSpec,
    index: int,
    kernel: kernels.Kernel,
    *,
    agent: bool,
    services: Sequence[str],
) -> list[str]:
    """Write the VM's modules tree and init script; the argv that boots it."""
    home = config.host_dir(spec.name)
    headers = cast(kernels.HeadersMode, spec.headers)
    approximate = approximate_headers(kernel) if headers == "approximate" else None
    modules = kernels.modules_tree(
        kernel, home / "vm", headers=headers, approximate_from=approximate
    )
    init = home / "vm-init.sh"
    init.write_text(guest_script(config, spec, index, agent=agent, services=services))
    rwdirs = {
        "/opt": home / "opt",
        "/etc/fleettrace": home / "etc",
        str(home): home,
        str(config.logs_dir): config.logs_dir,
    }
    link = config.link(index)
    nic = (
        "-netdev",
        f"tap,id=ft0,ifname={link},script=no,downscript=no",
        "-device",
        "virtio-net-pci,netdev=ft0",
    )
    return kernels.vng_command(
        kernel,
        modules=modules,
        name=spec.name,
        exec_=f"sh {init}",
        memory_mb=MEMORY_MB,
        cpus=CPUS,
        rwdirs=rwdirs,
        qemu_opts=nic,
        pidfile=pidfile(config, spec),
    )
