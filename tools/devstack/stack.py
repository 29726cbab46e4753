"""Bring a local stack up on this machine: Redis, the controller, and hosts in namespaces."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from controller.bootstrap.artifacts import source_root
from controller.keys.store import KeyStore
from devstack import harness, host, kernels, system, vm
from devstack.api import Api
from devstack.config import DevstackError, HostSpec, StackConfig, load
from devstack.teardown import down

log = logging.getLogger(__name__)
NEEDED = ("redis-server", "ip", "nsenter", "unshare", "mount", "sh")
BOOTSTRAPPED_HEARTBEAT_TIMEOUT_S = 30.0


def artifacts_dir(config: StackConfig) -> Path:
    """The checkout's var/artifacts (where `fleettrace serve` run from it caches them too)."""
    root = source_root()
    return root / "var" / "artifacts" if root is not None else config.state_dir / "artifacts"


class Stack:
    def __init__(
        self,
        config: StackConfig,
        *,
        services: Sequence[host.HostService] = (),
        agents: bool = True,
        settings: Mapping[str, str] | None = None,
        progress: Callable[[str], None] = log.info,
    ) -> None:
        self.config = config
        self.services = services
        # Without agents the hosts start bare, as bootstrap expects them: no agent, no config.
        self.agents = agents
        # More FLEETTRACE_* settings for the controller (and its bootstrap worker).
        self.settings = dict(settings or {})
        self.progress = progress
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.token = ""
        # When each VM host's QEMU started: its first heartbeat is measured from there.
        self.booted: dict[str, float] = {}
        self.kernels: dict[str, kernels.Kernel] = {}
        if config.vm_hosts and not config.redis_port:
            self.config = replace(config, redis_port=harness.free_port())

    @property
    def api(self) -> Api:
        return Api(self.config.api_url, self.token)

    def up(self, *, online_timeout_s: float = 90.0) -> None:
        """Start everything and wait until every host is online; on failure, undo it all."""
        self._preflight()
        started = time.monotonic()
        try:
            self._prepare_dirs()
            self._fetch_kernels()
            exports: dict[str, str] = {}
            for service in self.services:
                self.progress(f"setting up {service.name}")
                exports.update(service.setup(self.config))
            if self.config.vm_hosts:
                vm.add_redis_address(self.config)
            self._start_redis()
            self._start_controller(exports)
            api = self.api
            try:
                for index, spec in enumerate(self.config.hosts):
                    self._start_host(index, spec, api)
                self._wait_services()
                if self.agents:
                    self.progress("waiting for the agents' first heartbeats")
                    names = [h.name for h in self.config.hosts]
                    if self.config.vm_hosts:
                        online_timeout_s = max(online_timeout_s, vm.ONLINE_TIMEOUT_S)
                    api.wait_online(names, online_timeout_s, self.check, self._online)
            finally:
                api.close()
        except BaseException:
            self.progress("could not start: tearing down what was made")
            try:
                self.down()
            except DevstackError as exc:
                self.progress(str(exc))
            raise
        self.progress(f"stack up in {time.monotonic() - started:.1f}s: {self.config.api_url}")

    def _online(self, name: str) -> None:
        if name in self.booted:
            took = time.monotonic() - self.booted[name]
            how = "KVM" if kernels.kvm_works() else "emulated, no KVM"
            self.progress(f"host {name}: online {took:.1f}s after its VM started ({how})")

    def down(self, *, purge: bool = False) -> None:
        down(self.config.state_dir, purge=purge, progress=self.progress, reap=self.reap)

    def reap(self) -> None:
        for proc in self.procs.values():
            proc.poll()

    def check(self) -> None:
        """Raise if a process this stack started has exited."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                where = self.config.logs_dir / f"{name}.log"
                raise DevstackError(
                    f"{name} exited with {proc.returncode}; last lines of {where}:\n"
                    + harness.log_tail(where)
                )

    # -- steps ------------------------------------------------------------------------------

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise DevstackError("the local stack needs root (namespaces, cgroups, bcc)")
        missing = [tool for tool in NEEDED if shutil.which(tool) is None]
        if missing:
            raise DevstackError(f"missing tools: {', '.join(missing)} (run scripts/setup.sh)")
        system.cgroup_root()
        if self.config.vm_hosts:
            vm.preflight()
        for private in ("/opt", "/etc/fleettrace"):
            for needed in (Path(sys.prefix), Path(__file__), self.config.state_dir):
                if needed.resolve().is_relative_to(private):
                    raise DevstackError(
                        f"{needed} is under {private}, which every local host replaces with its own"
                    )
        previous = load(self.config.state_dir)
        if previous is not None:
            if system.cgroup_pids(system.cgroup_path(previous.cgroup_parent)):
                raise DevstackError(
                    f"a stack is already up in {self.config.state_dir}: `fleettrace dev down` first"
                )
            self.progress(f"cleaning up after a previous run in {self.config.state_dir}")
            down(self.config.state_dir, progress=self.progress)
        self._check_names_free()
        with socket.socket() as probe:
            # As uvicorn binds: an earlier run's TIME_WAIT sockets must not count as "in use".
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", self.config.port))
            except OSError:
                raise DevstackError(
                    f"port {self.config.port} is in use on 127.0.0.1: choose one with --port"
                ) from None

    def _check_names_free(self) -> None:
        """Refuse to start over things this stack did not make: `down` would remove them."""
        config = self.config
        taken = []
        if system.cgroup_path(config.cgroup_parent).exists():
            taken.append(f"cgroup {config.cgroup_parent}")
        for index, spec in enumerate(config.hosts):
            if system.netns_exists(config.netns(spec.name)):
                taken.append(f"netns {config.netns(spec.name)}")
            if system.link_exists(config.link(index)):
                taken.append(f"link {config.link(index)}")
        if taken:
            raise DevstackError(
                f"{', '.join(taken)} already exist and were not made by the stack in "
                f"{config.state_dir}: remove them first"
            )

    def _prepare_dirs(self) -> None:
        self.config.save()
        self.config.alive_file.touch()
        shutil.rmtree(self.config.logs_dir, ignore_errors=True)
        self.config.logs_dir.mkdir(parents=True)
        for mountpoint in (Path("/opt"), Path("/etc/fleettrace")):
            if not mountpoint.exists():
                # Recorded before it is made, so that `down` removes it even after a crash.
                self.config = self.config.with_created_dir(mountpoint)
                self.config.save()
                mountpoint.mkdir(parents=True)

    def _spawn(self, name: str, cmd: list[str], cgroup: str, **kwargs: Any) -> int:
        proc = system.spawn(
            cmd,
            cgroup=system.make_cgroup(cgroup),
            log_file=self.config.logs_dir / f"{name}.log",
            **kwargs,
        )
        self.procs[name] = proc
        pids = self._pids()
        pids[name] = proc.pid
        (self.config.state_dir / "pids.json").write_text(json.dumps(pids, indent=2) + "\n")
        return proc.pid

    def _pids(self) -> dict[str, int]:
        path = self.config.state_dir / "pids.json"
        return json.loads(path.read_text()) if path.exists() else {}  # type: ignore[no-any-return]

    def _wait(self, what: str, ready: Callable[[], bool], timeout_s: float) -> None:
        def checked() -> bool:
            self.check()
            return ready()

        try:
            harness.wait_for(checked, timeout_s, what)
        except TimeoutError:
            raise DevstackError(f"{what} not ready after {timeout_s:g}s") from None

    def _start_redis(self) -> None:
        """Redis with auth: no default user, the controller's own ACL user (agents get theirs
        from the controller when their hosts are added)."""
        config = self.config
        self.progress(f"starting redis on {config.redis_socket}")
        password = secrets.token_urlsafe(24)
        _private(config.redis_password_file, password + "\n")
        redis_conf = config.state_dir / "redis.conf"
        # AOF: queued tasks and cancel flags survive a restart (README: In production).
        # VM hosts cannot reach the socket: a TCP listener on the stack's own address for them.
        tcp = (config.redis_address, config.redis_port) if config.redis_port else None
        text = harness.redis_conf(
            data_dir=config.state_dir,
            sock=config.redis_socket,
            password=password,
            aof=True,
            tcp=tcp,
        )
        _private(redis_conf, text)
        self._spawn("redis", ["redis-server", str(redis_conf)], config.services_cgroup)
        self._wait("redis", partial(harness.redis_answers, config.redis_url), 15)

    def _controller_env(self, exports: dict[str, str]) -> dict[str, str]:
        """The services' exports too: FLEETTRACE_SSH_KEY and _KNOWN_HOSTS are settings of its
        bootstrap; its artifacts are cached in the checkout, not built again every `up`."""
        config = self.config
        if config.redis_port and not self.agents:
            # What bootstrap writes in every host's agent.env: VM hosts reach only TCP, and the
            # namespaced hosts get a route to it.
            exports = {**exports, "FLEETTRACE_AGENT_REDIS_URL": vm.agents_redis_url(config)}
        if config.vm_hosts and not self.agents:
            exports = {
                **exports,
                "FLEETTRACE_SSH_COMMAND_TIMEOUT_S": f"{vm.BOOTSTRAP_COMMAND_TIMEOUT_S:g}",
                "FLEETTRACE_BOOTSTRAP_VERIFY_TIMEOUT_S": f"{vm.BOOTSTRAP_VERIFY_TIMEOUT_S:g}",
            }
        return harness.clean_env(
            FLEETTRACE_DATABASE_URL=config.database_url,
            FLEETTRACE_REDIS_URL=config.redis_url,
            FLEETTRACE_KEYS_DIR=str(config.keys_dir),
            FLEETTRACE_HEARTBEAT_TIMEOUT_S=str(self._heartbeat_timeout_s()),
            FLEETTRACE_ARTIFACTS_DIR=os.environ.get("FLEETTRACE_ARTIFACTS_DIR")
            or str(artifacts_dir(config)),
            **exports,
            **self.settings,
        )

    def _heartbeat_timeout_s(self) -> float:
        """Agents that bootstrap installs heartbeat every 10 s unless told otherwise."""
        timeout = self.config.heartbeat_timeout_s
        if self.config.vm_hosts:
            timeout = max(timeout, vm.HEARTBEAT_TIMEOUT_S)
        return timeout if self.agents else max(timeout, BOOTSTRAPPED_HEARTBEAT_TIMEOUT_S)

    def _start_controller(self, exports: dict[str, str]) -> None:
        config = self.config
        env = self._controller_env(exports)
        fleettrace = host.fleettrace_command("fleettrace", "controller.cli")
        kid, _ = KeyStore(config.keys_dir).init()
        self.progress(f"controller signing key {kid} in {config.keys_dir}")
        self.progress("creating the database and an admin token")
        created = subprocess.run(
            [*fleettrace, "tokens", "create", "--name", "devstack", "--role", "admin"],
            capture_output=True,
            text=True,
            env=env,
            cwd=config.state_dir,
            timeout=120,
            check=False,
        )
        if created.returncode != 0:
            raise DevstackError(f"fleettrace tokens create failed: {created.stderr.strip()}")
        self.token = created.stdout.strip().splitlines()[-1]
        config.token_file.write_text(self.token + "\n")
        config.token_file.chmod(0o600)
        exports = {"FLEETTRACE_URL": config.api_url, "FLEETTRACE_TOKEN": self.token, **exports}
        config.env_file.write_text(
            "".join(f"export {k}={shlex.quote(v)}\n" for k, v in exports.items())
        )
        config.env_file.chmod(0o600)
        self.progress(f"starting the controller on {config.api_url}")
        self._spawn(
            "controller",
            [*fleettrace, "serve", "--host", "127.0.0.1", "--port", str(config.port)],
            config.services_cgroup,
            env=env,
            cwd=config.state_dir,
        )
        api = self.api
        try:
            self._wait("the controller", api.healthy, 60)
        finally:
            api.close()

    def _fetch_kernels(self) -> None:
        for version in sorted({h.kernel for h in self.config.vm_hosts if h.kernel is not None}):
            self.progress(f"kernel {version}: fetching with apt (cached after the first time)")
            self.kernels[version] = kernel = kernels.fetch(version)
            self.progress(f"kernel {version}: {kernel.release} in {kernel.root}")
            if any(h.kernel == version and h.headers == "approximate" for h in self.config.hosts):
                vm.approximate_headers(kernel)  # refused now, before anything starts

    def _start_vm(self, index: int, spec: HostSpec, api: Api) -> None:
        config = self.config
        assert spec.kernel is not None
        kernel = self.kernels[spec.kernel]
        root_addr, host_addr = config.addresses(index)
        self.progress(
            f"host {spec.name}: VM on {kernel.release} (headers {spec.headers}) at {host_addr}"
        )
        host.write_files(config, spec)
        system.make_tap(config.link(index), root_addr)
        cgroup = None if self.agents else config.host_cgroup(spec.name)
        join = api.register(spec, host_addr, cgroup=cgroup)
        url = vm.tcp_url(config, spec, join["redis_url"]) if self.agents else None
        if not self.agents:
            flags = " ".join(vm.bootstrap_flags(config))
            self.progress(f"host {spec.name}: bare; bootstrap it with {flags} (emulated: slow)")
        host.write_agent_env(config, spec, url)
        services = []
        for service in self.services:
            service.prepare(config, spec, index)
            services.append(shlex.join(service.command(config, spec, index)))
        argv = vm.command(config, spec, index, kernel, agent=self.agents, services=services)
        self.booted[spec.name] = time.monotonic()
        self._spawn(f"{spec.name}-vm", argv, config.agent_cgroup(spec.name))

    def _start_host(self, index: int, spec: HostSpec, api: Api) -> None:
        if spec.kernel is not None:
            self._start_vm(index, spec, api)
            return
        config = self.config
        root_addr, host_addr = config.addresses(index)
        netns = config.netns(spec.name)
        self.progress(f"host {spec.name}: netns {netns} at {host_addr}, workload {spec.workload}")
        host.write_files(config, spec)
        system.make_cgroup(config.host_cgroup(spec.name))
        system.make_netns(netns, config.link(index), root_addr, host_addr)
        if config.redis_port and not self.agents:
            system.add_route(netns, config.redis_address, root_addr)
        agents = config.agent_cgroup(spec.name)
        holder = self._spawn(f"{spec.name}-ns", host.holder_command(config, spec), agents)
        ready = host.ready_file(config, spec)
        self._wait(f"host {spec.name}'s namespaces", ready.exists, 10)
        # A bare host's traces will be confined to its workload's cgroup by the agent that
        # bootstrap installs: the host record carries it. Its Redis identity comes back once.
        cgroup = None if self.agents else config.host_cgroup(spec.name)
        join = api.register(spec, host_addr, cgroup=cgroup)
        host.write_agent_env(config, spec, join["redis_url"] if self.agents else None)
        self._spawn(
            f"{spec.name}-workload",
            host.workload_command(config, spec, holder),
            config.host_cgroup(spec.name),
        )
        if self.agents:
            self._spawn(
                f"{spec.name}-agent",
                host.agent_command(config, spec, holder),
                agents,
                env=harness.clean_env(FLEETTRACE_HEARTBEAT_S=str(config.heartbeat_s)),
            )
        for service in self.services:
            service.prepare(config, spec, index)
            command = service.command(config, spec, index)
            self._spawn(f"{spec.name}-{service.name}", [*system.enter(holder), *command], agents)

    def _wait_services(self) -> None:
        for index, spec in enumerate(self.config.hosts):
            # A VM's services start after its boot: minutes without KVM.
            timeout_s = vm.ONLINE_TIMEOUT_S if spec.kernel is not None else 15
            for service in self.services:
                ready = partial(service.ready, self.config, spec, index)
                self._wait(f"{spec.name}'s {service.name}", ready, timeout_s)


def _private(path: Path, text: str) -> None:
    """A file only root reads (made so before anything is written to it)."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)
