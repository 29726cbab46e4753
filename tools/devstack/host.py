"""One local host: its files, and the command lines of what runs in its namespaces."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Protocol

from controller.keys.store import KeyStore
from devstack import supervise, system, workload
from devstack.config import HostSpec, StackConfig

# Inside the host's namespace this is /etc/fleettrace/controller-keys.pub, the agent's default.
TRUSTED_KEYS_NAME = "controller-keys.pub"

WORKLOAD_DIR = "fleettrace-demo"
# Runs in a host's fresh mount and UTS namespaces: name it, give it its own /opt,
# /etc/fleettrace and /etc/hosts (naming itself, as sudo expects), then hold the namespaces
# open until the stack stops.
HOLDER = """set -e
echo "$1" > /proc/sys/kernel/hostname
mount --bind "$2/opt" /opt
mount --bind "$2/etc" /etc/fleettrace
# A minimal system (debootstrap, a scratch container) may have no /etc/hosts to mount over.
if [ -e /etc/hosts ]; then mount --bind "$2/hosts" /etc/hosts; fi
touch "$2/ready"
while [ -e "$3" ]; do sleep 1; done
"""


class HostService(Protocol):
    """Something more to run in every local host's namespaces (devstack/sshd.py: its sshd)."""

    name: str

    def setup(self, config: StackConfig) -> dict[str, str]:
        """Once per stack, before any host; returns variables to export in the stack's env file."""

    def ready(self, config: StackConfig, host: HostSpec, index: int) -> bool:
        """The service answers (polled after every host has started)."""

    def prepare(self, config: StackConfig, host: HostSpec, index: int) -> None:
        """Write what the service needs under config.host_dir(host.name)."""

    def command(self, config: StackConfig, host: HostSpec, index: int) -> list[str]:
        """The command line, run in the host's namespaces and its agent's cgroup; in the
        foreground (e.g. `sshd -D`): a service that exits fails the stack."""


def fleettrace_command(script: str, module: str) -> list[str]:
    """This venv's console script, or its module's main() when the scripts are not installed."""
    path = Path(sys.executable).parent / script
    if path.exists():
        return [str(path)]
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]


def write_files(config: StackConfig, host: HostSpec) -> None:
    """The host's own /opt (its workload), /etc/hosts, and an empty /etc/fleettrace."""
    home = config.host_dir(host.name)
    (home / "opt" / WORKLOAD_DIR).mkdir(parents=True, exist_ok=True)
    (home / "etc").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(workload.__file__, home / "opt" / WORKLOAD_DIR / "workload.py")
    machine = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else ""
    (home / "hosts").write_text(f"{machine.rstrip()}\n127.0.1.1\t{host.name}\n".lstrip())


def write_agent_env(config: StackConfig, host: HostSpec, redis_url: str | None) -> None:
    """The host's /etc/fleettrace/agent.env (0600) with its own Redis identity, as bootstrap
    writes it; nothing when the host starts bare (bootstrap installs the agent)."""
    if redis_url is None:
        return
    etc = config.host_dir(host.name) / "etc"
    # As bootstrap installs them: the agent runs only work signed by one of these keys.
    trusted = etc / TRUSTED_KEYS_NAME
    trusted.write_text(KeyStore(config.keys_dir).trusted_keys_text())
    trusted.chmod(0o644)
    env = etc / "agent.env"
    env.touch(mode=0o600)
    env.chmod(0o600)
    env.write_text(
        f"FLEETTRACE_HOST={host.name}\n"
        f"FLEETTRACE_REDIS_URL={redis_url}\n"
        f"FLEETTRACE_CGROUP={config.host_cgroup(host.name)}\n"
        f"FLEETTRACE_HEARTBEAT_S={config.heartbeat_s:g}\n"
        # The host's private /opt: its accepted run ids go when the stack goes.
        f"FLEETTRACE_STATE_DIR=/opt/fleettrace/state\n"
    )


def ready_file(config: StackConfig, host: HostSpec) -> Path:
    return config.host_dir(host.name) / "ready"


def holder_command(config: StackConfig, host: HostSpec) -> list[str]:
    """Enters the host's network namespace and makes its mount and UTS namespaces."""
    netns = system.NETNS_DIR / config.netns(host.name)
    home, alive = config.host_dir(host.name), config.alive_file
    return [
        *("nsenter", f"--net={netns}", "--"),
        *("unshare", "--mount", "--uts", "--propagation", "private", "--"),
        *("sh", "-c", HOLDER, "holder", host.name, str(home), str(alive)),
    ]


def workload_command(config: StackConfig, host: HostSpec, holder: int) -> list[str]:
    """Runs from the host's private /opt; stops by itself once the stack's alive file is gone."""
    script = f"/opt/{WORKLOAD_DIR}/workload.py"
    alive = str(config.alive_file)
    return [*system.enter(holder), sys.executable, script, host.workload, alive]


def agent_pidfile(config: StackConfig, host: HostSpec) -> Path:
    """The pid of the host's agent now running (its supervisor restarts it under a new one)."""
    return config.host_dir(host.name) / "agent.pid"


def agent_command(config: StackConfig, host: HostSpec, holder: int) -> list[str]:
    """The agent in the host's namespaces (held open by `holder`)."""
    return [*system.enter(holder), *agent_argv(config, host)]


def agent_argv(config: StackConfig, host: HostSpec) -> list[str]:
    """The agent under its supervisor, restarted like its systemd unit would be; it reads its
    Redis identity from the host's agent.env (never a command line)."""
    agent = fleettrace_command("fleettrace-agent", "node_agent.cli")
    return [
        *(*supervise.command(agent_pidfile(config, host)), "--"),
        *(*agent, "worker", "--host", host.name),
        *("--cgroup", config.host_cgroup(host.name)),
        *(("--allow-bpftrace",) if config.allow_bpftrace else ()),
    ]
