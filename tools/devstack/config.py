"""What a local stack is made of: its hosts, and the names and paths derived from its config."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from devstack.harness import REDIS_USER, free_port
from devstack.workload import MODES

DEFAULT_STATE_DIR = Path("/run/fleettrace-dev")
STATE_FILE = "stack.json"
HOST_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
MAX_HOSTS = 32
# Unix socket paths are limited to 108 bytes (sun_path).
MAX_SOCKET_PATH = 100


class DevstackError(Exception):
    """The local stack could not be brought up or down: one line for the operator."""


@dataclass(frozen=True)
class HostSpec:
    name: str
    labels: dict[str, str]
    workload: str = "web-moderate"
    # A VM host booting this distro kernel (devstack/kernels.py KNOWN), None for a namespaced
    # one; `headers` is what its /lib/modules/<release>/build is: exact, approximate or none.
    kernel: str | None = None
    headers: str = "exact"


# The demo fleet: each host runs a different workload, so the traces differ for real.
DEMO_HOSTS = (
    HostSpec("web-1", {"role": "web"}, "web-moderate"),
    HostSpec("web-2", {"role": "web"}, "web-heavy"),
    HostSpec("db-1", {"role": "db"}, "db-io"),
)


def demo_hosts(count: int) -> tuple[HostSpec, ...]:
    """The first `count` demo hosts; past three, more web hosts alternating the web workloads."""
    if not 1 <= count <= MAX_HOSTS:
        raise DevstackError(f"--hosts must be between 1 and {MAX_HOSTS}, got {count}")
    extra = (
        HostSpec(f"web-{n}", {"role": "web"}, "web-heavy" if n % 2 == 0 else "web-moderate")
        for n in range(3, count + 1)
    )
    return (*DEMO_HOSTS, *extra)[:count]


@dataclass(frozen=True)
class StackConfig:
    """Everything a stack makes is named from this, so `down` can find it again from the file."""

    state_dir: Path = DEFAULT_STATE_DIR
    hosts: tuple[HostSpec, ...] = DEMO_HOSTS
    port: int = 8700
    netns_prefix: str = "ft-"
    # Root-side veth names are <link_prefix><index>; interface names are at most 15 bytes.
    link_prefix: str = "ftdev"
    cgroup_parent: str = "fleettrace-dev"
    # Hosts get a /30 each in 10.250.<subnet>.0/24: .4i+1 on the root side, .4i+2 inside.
    subnet: int = 0
    heartbeat_s: float = 2.0
    heartbeat_timeout_s: float = 10.0
    # Agents run bpftrace scripts (`fleettrace-agent worker --allow-bpftrace`): off, as on a host.
    allow_bpftrace: bool = False
    # Redis's TCP port on redis_address, for VM hosts (they cannot reach its unix socket);
    # 0 when the stack has none.
    redis_port: int = 0
    created_dirs: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        names = [h.name for h in self.hosts]
        for name in names:
            if not HOST_NAME.match(name):
                raise DevstackError(f"bad host name {name!r} (lowercase letters, digits, '-')")
        for host in self.hosts:
            if host.workload not in MODES:
                known = ", ".join(MODES)
                raise DevstackError(f"host {host.name}: workload {host.workload!r} not in {known}")
        if len(set(names)) != len(names):
            raise DevstackError(f"host names repeat: {names}")
        if not 1 <= len(names) <= MAX_HOSTS:
            raise DevstackError(f"a stack has 1 to {MAX_HOSTS} hosts")
        if len(self.link(len(names) - 1)) > 15:
            raise DevstackError(f"link prefix {self.link_prefix!r} is too long")
        if not 0 <= self.subnet <= 255:
            raise DevstackError("subnet must be 0..255 (the third octet of 10.250.x.0/24)")
        for host in self.hosts:
            _check_vm(host)
        if len(str(self.redis_socket)) > MAX_SOCKET_PATH:
            raise DevstackError(f"state dir {self.state_dir} is too long for a unix socket path")

    # -- names ------------------------------------------------------------------------------

    def netns(self, host: str) -> str:
        return f"{self.netns_prefix}{host}"

    def link(self, index: int) -> str:
        return f"{self.link_prefix}{index}"

    def addresses(self, index: int) -> tuple[str, str]:
        """(root side, host side) of host `index`'s veth pair, without the /30."""
        base = 4 * index
        return f"10.250.{self.subnet}.{base + 1}", f"10.250.{self.subnet}.{base + 2}"

    @property
    def redis_address(self) -> str:
        """Where VM hosts reach Redis over TCP: an address of this machine past every host's
        /30 (on lo: packets from a VM's tap are delivered to any local address)."""
        return f"10.250.{self.subnet}.254"

    @property
    def vm_hosts(self) -> tuple[HostSpec, ...]:
        return tuple(h for h in self.hosts if h.kernel is not None)

    def host_cgroup(self, host: str) -> str:
        """The cgroup holding a host's workload: the agent confines every trace to it."""
        return f"{self.cgroup_parent}/hosts/{host}"

    def agent_cgroup(self, host: str) -> str:
        """A sibling for the agent and the namespace holder: they stay out of the host's data."""
        return f"{self.cgroup_parent}/agents/{host}"

    @property
    def services_cgroup(self) -> str:
        return f"{self.cgroup_parent}/services"

    # -- paths ------------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    @property
    def alive_file(self) -> Path:
        """Workloads and namespace holders exit by themselves once this is gone."""
        return self.state_dir / "alive"

    @property
    def redis_socket(self) -> Path:
        return self.state_dir / "redis.sock"

    @property
    def redis_password_file(self) -> Path:
        """The controller's own Redis password (0600): Redis here requires auth, as anywhere."""
        return self.state_dir / "redis.pass"

    @property
    def redis_url(self) -> str:
        """The controller's URL, with its user and password; agents get their own."""
        try:
            password = self.redis_password_file.read_text().strip()
        except FileNotFoundError:
            return f"unix://{self.redis_socket}"
        return f"unix://{REDIS_USER}:{password}@{self.redis_socket}"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.state_dir / 'controller.db'}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def keys_dir(self) -> Path:
        """The stack controller's signing keys (FLEETTRACE_KEYS_DIR)."""
        return self.state_dir / "keys"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def env_file(self) -> Path:
        """FLEETTRACE_URL and FLEETTRACE_TOKEN, for the client commands."""
        return self.state_dir / "env"

    @property
    def token_file(self) -> Path:
        return self.state_dir / "token"

    def host_dir(self, host: str) -> Path:
        """Holds what is bind-mounted over the host's private /opt and /etc/fleettrace."""
        return self.state_dir / "hosts" / host

    # -- the state file ---------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state_dir"] = str(self.state_dir)
        data["hosts"] = [asdict(h) for h in self.hosts]
        data["created_dirs"] = list(self.created_dirs)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StackConfig:
        fields = dict(data)
        fields["state_dir"] = Path(fields["state_dir"])
        fields["hosts"] = tuple(HostSpec(**h) for h in fields["hosts"])
        fields["created_dirs"] = tuple(fields.get("created_dirs", ()))
        return cls(**fields)

    def save(self) -> None:
        """Written before anything is made, so a crashed `up` can still be cleaned by `down`."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(self.state_file)

    def with_created_dir(self, path: Path) -> StackConfig:
        return replace(self, created_dirs=(*self.created_dirs, str(path)))


def _check_vm(host: HostSpec) -> None:
    from devstack.kernels import HEADERS_MODES, check_version

    if host.kernel is not None:
        try:
            check_version(host.kernel)
        except DevstackError as exc:
            raise DevstackError(f"host {host.name}: {exc}") from None
    if host.headers not in HEADERS_MODES:
        modes = ", ".join(HEADERS_MODES)
        raise DevstackError(f"host {host.name}: headers {host.headers!r} not in {modes}")


def private_config(
    state_dir: Path,
    hosts: tuple[HostSpec, ...],
    *,
    kind: str,
    subnet: int,
    owner: str = "test",
    **fields: Any,
) -> StackConfig:
    """A stack whose names (netns, links, cgroups, subnet, port) are its own, so a test or a
    benchmark never touches a developer's `fleettrace dev up` stack nor another's. `kind` is
    1-3 letters, `subnet` a base to which this process's tag is added."""
    tag = os.getpid() % 10_000
    return StackConfig(
        state_dir=state_dir,
        hosts=hosts,
        port=free_port(),
        netns_prefix=f"ft{kind}{tag}-",
        link_prefix=f"ft{kind}{tag}v",
        cgroup_parent=f"fleettrace-{owner}-{os.getpid()}-{kind}",
        subnet=subnet + tag % 50,
        **fields,
    )


def load(state_dir: Path) -> StackConfig | None:
    """The config of the stack recorded in `state_dir`, or None when there is none."""
    path = state_dir / STATE_FILE
    try:
        return StackConfig.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError) as exc:
        raise DevstackError(f"cannot read {path}: {exc}") from None
