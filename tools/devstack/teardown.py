"""Take a local stack down from its state file, even half made or left by a crash; report on it."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from devstack import kernels, sshd, system, vm
from devstack.api import Api
from devstack.config import DevstackError, HostSpec, StackConfig, load

log = logging.getLogger(__name__)


def down(
    state_dir: Path,
    *,
    purge: bool = False,
    progress: Callable[[str], None] = log.info,
    reap: Callable[[], None] = lambda: None,
) -> bool:
    """Stop and remove everything the stack in `state_dir` made; False if there was none.

    Every step is tried even when an earlier one fails; the state file stays until all have
    succeeded, so running `down` again finishes the job. The logs stay unless `purge`.
    """
    config = load(state_dir)
    if config is None:
        if purge and state_dir.exists():
            shutil.rmtree(state_dir)
        return False
    errors: list[str] = []

    def attempt(what: str, step: Callable[[], None]) -> None:
        try:
            step()
        except (DevstackError, OSError) as exc:
            errors.append(f"{what}: {exc}")

    progress(f"stopping the stack in {state_dir}")
    config.alive_file.unlink(missing_ok=True)
    for host in config.vm_hosts:
        # By its pid file: QEMU may have been left by a crash, outside any cgroup we still know.
        attempt(f"stopping {host.name}'s QEMU", partial(vm.stop, config, host))
    parent = _cgroup(config.cgroup_parent, errors)
    if parent is not None:
        # Agents first, so that they do not log a broker that went away; then the rest.
        for group in ("agents", "hosts", "services", ""):
            attempt(f"stopping {parent / group}", partial(system.stop_cgroup, parent / group))
            reap()
        attempt(f"removing {parent}", partial(system.remove_cgroup, parent))
    # After the processes: the sudo user cannot be removed while its sessions run.
    attempt("removing what sshd needed outside the state dir", partial(sshd.undo, config))
    for index, host in enumerate(config.hosts):
        netns, link = config.netns(host.name), config.link(index)
        attempt(f"removing netns {netns}", partial(system.remove_netns, netns, link))
    if config.redis_port:
        attempt("removing Redis's address", partial(vm.remove_redis_address, config))
    for made in reversed(config.created_dirs):
        attempt(f"removing {made}", partial(_rmdir_if_empty, Path(made)))
    if errors:
        raise DevstackError(
            "teardown incomplete (run `fleettrace dev down` again):\n  " + "\n  ".join(errors)
        )
    for entry in state_dir.iterdir():
        if entry.name == "logs" and not purge:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if purge:
        state_dir.rmdir()
    progress("stack down: no processes, namespaces, links or cgroups left")
    return True


def _cgroup(relative: str, errors: list[str]) -> Path | None:
    try:
        return system.cgroup_path(relative)
    except DevstackError as exc:
        errors.append(str(exc))
        return None


def _rmdir_if_empty(path: Path) -> None:
    """Remove a mountpoint we made, unless another stack's hosts still mount over it."""
    if path.is_dir() and not any(path.iterdir()) and not _mounted_anywhere(path):
        path.rmdir()


def _mounted_anywhere(path: Path) -> bool:
    """A mount on `path` in any process's mount namespace (rmdir would detach it there)."""
    for mountinfo in Path("/proc").glob("[0-9]*/mountinfo"):
        try:
            lines = mountinfo.read_text().splitlines()
        except OSError:
            continue
        if any(line.split()[4] == str(path) for line in lines if len(line.split()) > 4):
            return True
    return False


def status(state_dir: Path) -> dict[str, Any] | None:
    """What is up in `state_dir`: services, and per host its namespace, processes and API state."""
    config = load(state_dir)
    if config is None:
        return None
    pids_file = state_dir / "pids.json"
    pids: dict[str, int] = json.loads(pids_file.read_text()) if pids_file.exists() else {}
    token = config.token_file.read_text().strip() if config.token_file.exists() else ""
    api = Api(config.api_url, token, timeout_s=3.0)
    try:
        healthy = api.healthy()
        known = _hosts(api) if healthy and token else {}
    finally:
        api.close()
    report: dict[str, Any] = {
        "state_dir": str(state_dir),
        "api_url": config.api_url,
        "env_file": str(config.env_file),
        "redis": {"socket": str(config.redis_socket), "running": _running(pids, "redis", config)},
        "controller": {"running": _running(pids, "controller", config), "healthy": healthy},
        "hosts": [],
    }
    for index, host in enumerate(config.hosts):
        netns = config.netns(host.name)
        workload = system.cgroup_pids(system.cgroup_path(config.host_cgroup(host.name)))
        report["hosts"].append(
            {
                "name": host.name,
                "labels": host.labels,
                "address": config.addresses(index)[1],
                "netns": netns if system.netns_exists(netns) else None,
                "cgroup": config.host_cgroup(host.name),
                "workload": host.workload,
                "workload_processes": len(workload),
                "agent_running": _running(pids, f"{host.name}-agent", config)
                # A VM's agent runs in the guest: its heartbeat is what says it runs.
                or (host.kernel is not None and known.get(host.name, {}).get("state") == "online"),
                "sshd_running": _running(pids, f"{host.name}-sshd", config),
                "state": known.get(host.name, {}).get("state", "unknown"),
                "vm": _vm(config, host),
            }
        )
    return report


def _vm(config: StackConfig, host: HostSpec) -> dict[str, Any] | None:
    if host.kernel is None:
        return None
    return {
        "kernel": host.kernel,
        "headers": host.headers,
        "qemu_pid": kernels.qemu_pid(vm.pidfile(config, host)),
    }


def _running(pids: dict[str, int], name: str, config: StackConfig) -> bool:
    """The recorded process still runs, in this stack's cgroups (not a reused pid)."""
    try:
        return config.cgroup_parent in Path(f"/proc/{pids[name]}/cgroup").read_text()
    except (KeyError, OSError):
        return False


def _hosts(api: Api) -> dict[str, dict[str, Any]]:
    try:
        return api.hosts()
    except DevstackError:
        return {}
